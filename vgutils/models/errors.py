"""What goes wrong when a model is read (config, weights, processor) as one
:class:`~vgutils.errors.DataError` line naming the model -- and the file, when a weights
file is incomplete or damaged -- instead of transformers' and huggingface_hub's messages
(which name neither, and print one line per network retry)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from vgutils.errors import DataError, VgError


@contextlib.contextmanager
def model_errors(name: str, source: str | None = None, revision: str | None = None):
    """Inside: reading model ``name`` (a Hub id, folder or ``tiny:`` name; ``source``: the
    folder or Hub id it resolved to). A failure becomes one :class:`DataError` line naming
    it; huggingface_hub's retry warnings are not printed meanwhile."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    except VgError:
        raise
    except Exception as err:
        if not _is_read_error(err):
            raise
        raise DataError(describe(name, source or name, revision, err)) from err
    finally:
        hub_logger.setLevel(level)


def _is_read_error(err: Exception) -> bool:
    from safetensors import SafetensorError

    return isinstance(err, OSError | ValueError | RuntimeError | SafetensorError)


def describe(name: str, source: str, revision: str | None, err: Exception) -> str:
    """The one-line message for ``err`` raised while reading model ``name``."""
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else type(err).__name__
    folder = Path(source) if Path(source).is_dir() else _cached_snapshot(source, revision)
    if not Path(source).is_dir():
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
        )

        if isinstance(err, LocalEntryNotFoundError | OfflineModeIsEnabled) or (
            "couldn't connect" in text or "offline mode" in text
        ):
            return (
                f"model {name!r}: not in the local Hugging Face cache, and the Hub cannot be "
                f"reached (no network, or offline mode); download it where there is a network "
                f"(`hf download {source}`), or give a local folder"
            )
        if isinstance(err, RepositoryNotFoundError) or any(
            marker in text
            for marker in ("not a valid model identifier", "Repository Not Found", "404")
        ):
            return (
                f"model {name!r}: no such model on the Hugging Face Hub and no such local "
                "folder (a typo? a gated or private model needs `hf auth login`)"
            )
    damaged = _damaged_weights(folder) if folder is not None else None
    if damaged is not None:
        path, why = damaged
        return (
            f"model {name!r}: {path}: unreadable ({why}); the file is incomplete or damaged "
            "(an interrupted download or copy?): delete it and download or copy it again"
        )
    return f"model {name!r}: {type(err).__name__}: {first}"


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a Hub id, if its config is in the cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # not a valid id: no snapshot
        return None
    return Path(path).parent if isinstance(path, str) else None


def _damaged_weights(folder: Path) -> tuple[Path, str] | None:
    """The first ``*.safetensors`` file of ``folder`` whose header does not read (a file cut
    short fails here: its header promises more bytes than it holds), with the reason."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except Exception as err:
            return path, str(err).strip().splitlines()[0][:160] if str(err).strip() else "?"
    return None
