"""JupyterLab as ``make lab`` starts it, for the tests that drive it (test_lab, test_ui):
the repository's ``lab/jupyter_server_config.py`` on loopback with a token, Jupyter's
state kept out of the user's home."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def git(root: Path, *args: str) -> str:
    """``git -C root *args``'s standard output (fails on a non-zero exit)."""
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_lab(repo: Path, state: Path, env: dict | None = None) -> Iterator[tuple[str, str]]:
    """JupyterLab started with ``repo``'s ``lab/`` config (which sets the tree root) and
    its config, runtime and data folders under ``state`` (also its working folder and
    ``server.log``); ``env`` adds variables. Yields ``(base_url, token)`` once the server
    answers; stops it on exit. A server that does not answer in 90 s fails the test with
    its log."""
    for name in ("config", "runtime", "data"):
        (state / name).mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "config" / "workspaces"),
        **(env or {}),
    }
    log = (state / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            f"--config={repo / 'lab' / 'jupyter_server_config.py'}",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=state,  # not the repository: the config sets the root
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (state / "server.log").read_text())
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
