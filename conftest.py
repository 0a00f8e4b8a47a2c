"""Test-session isolation for tests/ and the notebooks run by nbval: tiny models, data,
results and figures go to a temporary folder, never the user's cache or the repo."""

import os
import shutil
import tempfile

_VARIABLES = ("VGUTILS_CACHE", "VGUTILS_DATA", "VGUTILS_RESULTS", "VGUTILS_FIGURES")
_saved: dict[str, str | None] = {}


def pytest_configure(config):
    root = tempfile.mkdtemp(prefix="vgutils-tests-")
    config._vgutils_root = root
    for name in (*_VARIABLES, "VGUTILS_OFFLINE", "MPLBACKEND", "VGUTILS_NOTEBOOK_PROFILE"):
        _saved[name] = os.environ.get(name)
    for name in _VARIABLES:
        os.environ[name] = os.path.join(root, name.split("_")[1].lower())
    os.environ["VGUTILS_OFFLINE"] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["VGUTILS_NOTEBOOK_PROFILE"] = "smoke"  # notebooks whose parameter is default


def pytest_unconfigure(config):
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(getattr(config, "_vgutils_root", ""), ignore_errors=True)
