"""Shared fixtures (the session's folders are isolated by the root conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def vlms():
    """The tiny model of every family, loaded once."""
    from vgutils.models import load_model
    from vgutils.models.tiny import TINY_FAMILIES

    return {family: load_model(f"tiny:{family}") for family in TINY_FAMILIES}
