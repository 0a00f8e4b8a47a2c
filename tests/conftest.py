"""Session-wide isolation: tiny models and data are built into temporary folders."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_and_data(tmp_path_factory):
    """``$VGUTILS_CACHE`` and ``$VGUTILS_DATA`` point at session temp folders, so tests
    never touch the user's cache or data/ and build what they need (subprocesses too)."""
    saved = {k: os.environ.get(k) for k in ("VGUTILS_CACHE", "VGUTILS_DATA", "VGUTILS_OFFLINE")}
    os.environ["VGUTILS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["VGUTILS_DATA"] = str(tmp_path_factory.mktemp("data"))
    os.environ["VGUTILS_OFFLINE"] = "1"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def vlms(isolated_cache_and_data):
    """The tiny model of every family, loaded once."""
    from vgutils.models import load_model
    from vgutils.models.tiny import TINY_FAMILIES

    return {family: load_model(f"tiny:{family}") for family in TINY_FAMILIES}
