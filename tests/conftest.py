"""Shared fixtures (the session's folders are isolated by the root conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def vlms():
    """The tiny model of every family, loaded once."""
    from vgutils.models import load_model
    from vgutils.models.tiny import TINY_FAMILIES

    return {family: load_model(f"tiny:{family}") for family in TINY_FAMILIES}


@pytest.fixture(autouse=True)
def no_rehearsal_left_over():
    """A test that starts a rehearsal (``jobs --rehearsal``, ``activate``) ends it: its
    context and model source do not leak into the next test."""
    yield
    from vgutils import rehearsal

    rehearsal.deactivate()
