"""Where things come from and go to: one small value that the code below the CLI reads
instead of environment variables (pooch's ``Pooch`` object plays the same part there).

A :class:`Context` holds the data root and the hash registries laid over
``data_manifest/registry.txt``, the results, figures and cache roots, the offline switch,
the chosen profile, a note that every figure carries, and the names of the plug-ins that
made it (e.g. ``rehearsal:small``). :func:`current` gives the context in force:

1. the one set by :func:`use` in this thread of control (a ``ContextVar``: scoped, the
   way :mod:`vgutils.models.attention` scopes capture and knockout);
2. else :func:`from_environment`, read anew on each call: ``$VGUTILS_CONTEXT`` (a JSON
   object: what :func:`activate`, called by a plug-in such as the rehearsal, sets for the
   process and its children, papermill's kernels and launcher ranks included: the roots,
   registries, note and plug-ins) over the single
   variables ``$VGUTILS_DATA``, ``$VGUTILS_RESULTS``, ``$VGUTILS_FIGURES``,
   ``$VGUTILS_CACHE``, ``$VGUTILS_OFFLINE``, ``$VGUTILS_PROFILE`` and the fault-injection
   switches.

:func:`from_environment` is the only place in the package below the CLI that reads a
``VGUTILS_*`` variable.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository (or source tree) this package runs from; :mod:`vgutils.paths` lays out
its folders."""
VARIABLE = "VGUTILS_CONTEXT"
"""The exported context of a parent process (JSON; :meth:`Context.to_json`)."""
KILL_AT_STEP = "VGUTILS_KILL_AT_STEP"
"""Fault injection: SIGKILL an extraction right after write step k of ``finalize``."""
KILL_AFTER_PARTS = "VGUTILS_KILL_AFTER_PARTS"
"""Crash-recovery tests: SIGKILL an extraction after this many parts were written."""


@dataclass(frozen=True)
class Context:
    """Roots and switches. ``registries``: registry files (pooch format) whose hashes
    stand in for ``data_manifest/registry.txt``'s names they list (later files win);
    ``figure_note``: a line every saved figure carries; ``plugins``: what made this
    context (the CLI turns them on again in a child process); ``kill_at_step`` /
    ``kill_after_parts``: fault injection (tests); ``local_rank`` / ``local_world``: this
    process's place among the processes a launcher started on this machine (set by the
    launcher plug-in, :mod:`vgutils.launch`; None: not launched), where ``device: auto``
    picks the GPU."""

    data_root: Path
    results_root: Path
    figures_root: Path
    cache_dir: Path
    offline: bool = False
    profile: str | None = None
    registries: tuple[Path, ...] = ()
    figure_note: str | None = None
    plugins: tuple[str, ...] = ()
    kill_at_step: int | None = None
    kill_after_parts: int = 0
    local_rank: int | None = None
    local_world: int | None = None

    def replace(self, **changes) -> Context:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_json(self) -> str:
        """What a child process inherits (:data:`EXPORTED`) as one JSON object."""
        raw = {key: value for key, value in asdict(self).items() if key in EXPORTED}
        for key, value in raw.items():
            if isinstance(value, Path):
                raw[key] = str(value)
            elif isinstance(value, tuple):
                raw[key] = [str(v) for v in value]
        return json.dumps(raw, sort_keys=True)

    def with_json(self, text: str) -> Context:
        """This context with the values of :meth:`to_json`'s ``text``."""
        raw = {key: value for key, value in json.loads(text).items() if key in EXPORTED}
        for key in ("data_root", "results_root", "figures_root", "cache_dir"):
            if key in raw:
                raw[key] = Path(raw[key])
        for key, kind in (("registries", Path), ("plugins", str)):
            if key in raw:
                raw[key] = tuple(kind(v) for v in raw[key])
        return replace(self, **raw)


EXPORTED = (
    "data_root",
    "results_root",
    "figures_root",
    "cache_dir",
    "offline",
    "registries",
    "figure_note",
    "plugins",
    "local_rank",
    "local_world",
)
"""What :func:`activate` hands to child processes (the profile and the fault switches
travel in their own variables)."""


_scoped: ContextVar[Context | None] = ContextVar("vgutils_context", default=None)
_exported: list[str | None] = []
"""``$VGUTILS_CONTEXT`` before each :func:`activate` (restored by :func:`deactivate`)."""


def from_environment(environ: Mapping[str, str] | None = None) -> Context:
    """The context the environment describes (see the module docstring)."""
    environ = os.environ if environ is None else environ
    kill_at = environ.get(KILL_AT_STEP)
    context = Context(
        data_root=Path(environ.get("VGUTILS_DATA") or REPO_ROOT / "data"),
        results_root=Path(environ.get("VGUTILS_RESULTS") or REPO_ROOT / "results"),
        figures_root=Path(environ.get("VGUTILS_FIGURES") or REPO_ROOT / "figures"),
        cache_dir=Path(environ.get("VGUTILS_CACHE") or Path.home() / ".cache" / "vgutils"),
        offline=bool(environ.get("VGUTILS_OFFLINE")),
        profile=environ.get("VGUTILS_PROFILE") or None,
        kill_at_step=int(kill_at) if kill_at else None,
        kill_after_parts=int(environ.get(KILL_AFTER_PARTS) or 0),
    )
    exported = environ.get(VARIABLE)
    return context.with_json(exported) if exported else context


def current() -> Context:
    """The context in force (see the module docstring)."""
    return _scoped.get() or from_environment()


@contextlib.contextmanager
def use(context: Context) -> Iterator[Context]:
    """Inside the block, :func:`current` is ``context`` (this thread of control only)."""
    token = _scoped.set(context)
    try:
        yield context
    finally:
        _scoped.reset(token)


def activate(context: Context) -> Context:
    """Make ``context`` this process's, and its children's (``$VGUTILS_CONTEXT``), until
    :func:`deactivate`."""
    _exported.append(os.environ.get(VARIABLE))
    os.environ[VARIABLE] = context.to_json()
    return context


def deactivate() -> None:
    """Undo the last :func:`activate` (nothing to do when none is in force)."""
    if not _exported:
        return
    previous = _exported.pop()
    if previous is None:
        os.environ.pop(VARIABLE, None)
    else:
        os.environ[VARIABLE] = previous
