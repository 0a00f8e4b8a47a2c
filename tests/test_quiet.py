"""`make figures` without the noise (#29 item 8): no transformers progress bars for small
local models, and not transformers' warning about the original LLaVA model types; the
same bars and warnings for everything else."""

import json
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def bars_on():
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    yield transformers_logging
    transformers_logging.enable_progress_bar()


def test_a_tiny_model_loads_without_bars_and_a_large_one_with_them(bars_on, capfd, monkeypatch):
    import vgutils.models.quiet as quiet
    from vgutils.models import load_model

    load_model("tiny:llava", device="cpu")  # built (if needed) and loaded
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert bars_on.is_progress_bar_enabled()  # switched back on after the load
    monkeypatch.setattr(quiet, "SMALL_WEIGHTS", 0)  # every model counts as large now
    load_model("tiny:llava", device="cpu")
    assert "Loading weights" in capfd.readouterr().err


def test_no_progress_bars_restores_the_state_on_error(bars_on):
    from vgutils.models.quiet import no_progress_bars

    with pytest.raises(RuntimeError), no_progress_bars():
        assert not bars_on.is_progress_bar_enabled()
        raise RuntimeError
    assert bars_on.is_progress_bar_enabled()
    bars_on.disable_progress_bar()
    with no_progress_bars():
        pass
    assert not bars_on.is_progress_bar_enabled()  # off before: stays off


def test_only_the_original_model_type_warning_is_dropped(caplog):
    from vgutils.models.original import _original_type_accepted

    logger = logging.getLogger("transformers.configuration_utils")
    ours = "You are using a model of type `llava_qwen2` to instantiate a model of type ``."
    other = "You are using a model of type `bert` to instantiate a model of type `gpt2`."
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with _original_type_accepted("llava_qwen2"):
            logger.warning(ours)
            logger.warning(other)
            logger.warning("something else")
        logger.warning(ours)  # outside: shown
    assert [r.getMessage() for r in caplog.records] == [other, "something else", ours]


def test_converting_an_original_checkpoint_is_quiet(bars_on, capfd):
    from vgutils.models import load_model

    load_model("tiny:llava_qwen2", device="cpu")  # read, converted once, loaded
    err = capfd.readouterr().err
    assert "model of type `llava_qwen2`" not in err
    assert "Loading weights" not in err and "converting tensors" not in err


ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "jupyter"


def test_the_figures_kernel_drops_only_the_tcp_warning():
    from traitlets.config import Config

    config = Config()
    names = runpy.run_path(
        str(KERNELS / "kernels" / "python3" / "kernel_config.py"),
        init_globals={"get_config": lambda: config},
    )
    logging_config = config.IPKernelApp.logging_config
    assert logging_config["handlers"]["console"]["filters"] == ["no_tcp_warning"]
    only = logging_config["filters"]["no_tcp_warning"]["()"]()

    def record(message):
        return logging.LogRecord("IPKernelApp", logging.WARNING, "", 0, message, None, None)

    assert not only.filter(record(names["TCP_WARNING"] + ". All communication ..."))
    assert only.filter(record("Failed to load connection file"))
    spec = json.loads((KERNELS / "kernels" / "python3" / "kernel.json").read_text())
    assert "--config={resource_dir}/kernel_config.py" in spec["argv"]
    assert "JUPYTER_PATH=$(CURDIR)/jupyter" in (ROOT / "Makefile").read_text()


def _kernel_stderr(env: dict) -> str:
    code = (
        "from jupyter_client.manager import start_new_kernel\n"
        "km, kc = start_new_kernel(kernel_name='python3', startup_timeout=60)\n"
        "kc.stop_channels(); km.shutdown_kernel(now=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_kernel_started_as_make_figures_does_prints_no_tcp_warning():
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    assert "without encryption" in _kernel_stderr(env)  # the stock kernel says it
    assert "without encryption" not in _kernel_stderr({**env, "JUPYTER_PATH": str(KERNELS)})
