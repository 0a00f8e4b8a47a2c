"""Extraction results on disk: written as samples finish, resumable, merged at the end,
by one process or by the ranks of a launcher together.

A run folder holds

- ``run.json``: options, identity (model, dataset, images, code), versions, ``status``
  (``running`` / ``merging`` / ``complete``), ``plan`` (what the counts start from) and,
  once complete, ``counts`` with the row count of every final file;
- ``samples.txt``: every key the run must account for (its samples' ids, and
  ``row:<file>:<line>`` for a bad row), one a line; the run is complete when each one is
  done (in a part) or skipped (in an errors file);
- ``parts/<kind>-NNNNN.parquet`` while running, one number per group of samples (one
  image); a rank ``r`` of a launcher writes ``parts/<kind>-r<r>-NNNNN.parquet``;
- ``errors.jsonl``: skipped samples (appended and fsynced); rank ``r`` appends to
  ``errors.r<r>.jsonl``, folded into ``errors.jsonl`` by the merge;
- ``maps/<sample>.npz`` with ``--save-maps``;
- ``<kind>.parquet`` (``metrics``, ``head_metrics``; ``answers`` for VQA) once complete;
- ``.lock``: the advisory lock of the writers; ``.rank-<r>.lock``: rank ``r``'s own;
  ``.state.lock``: held for a moment while a writer joins, a merge runs or a status is
  read.

Why the invariants hold under any crash point and any concurrency
-----------------------------------------------------------------

1. *One writer, or the ranks of one launch.* :meth:`RunStore.open` takes an ``flock`` on
   ``.lock`` before it reads or writes anything: exclusive for a single process (which
   writes ``pid host time`` into it), shared for a rank, which also takes its own
   ``.rank-<r>.lock`` exclusively (``pid host time rank world``). A second single process,
   a single process beside ranks, a rank beside a single process, a second copy of a
   rank, and a rank of another world size beside live ranks all get a one-line
   :class:`RunLocked` naming a holder. Joining and probing happen under ``.state.lock``,
   so no two of them race. The kernel drops a lock when its holder dies (even by
   SIGKILL), so a lock left by a crash is stale by construction: the next writer takes it
   and reports the dead holder. Lock files are never unlinked (unlinking would let two
   processes lock two different inodes).
2. *Every file changes by one atomic step.* Parts, final files, ``run.json``,
   ``samples.txt`` and the rewritten ``errors.jsonl`` are written to a temporary name,
   fsynced and renamed over the target (``os.replace``); readers see the old or the new
   file, never a mix (a failed write, e.g. on a full disk, removes its temporary file).
   Only the errors files are appended to, each by one process; a torn line (a kill
   mid-append) is ignored when read, fenced off with a newline before the next append,
   and removed when its writer next opens the run (one atomic rewrite of the whole
   lines), so no errors file keeps an unparsable line.
3. *One source of truth per state.* While ``run.json`` says ``running`` the parts are the
   results and final files are ignored (a crashed ``finalize`` may have left some). Once
   it says ``complete`` the final files are the results and any part left is garbage
   (deleted on open). A part counts only when its main-kind part (written last) exists,
   so a group half-written by a crash is recomputed, and its number is reused,
   overwriting the orphan. Work is keyed by sample, not by rank: whatever wrote a part, its
   samples are done, so a run resumed with another number of ranks keeps every finished
   sample.
4. *Completion is one atomic rename, by whoever finds every sample done.*
   :meth:`RunStore.complete` (under ``.state.lock``) merges only when every key of
   ``samples.txt`` is done; the last rank to finish finds that and merges, the others
   find the run complete or not yet done. :meth:`RunStore.finalize` writes each final file
   from the parts alone (never appending to an existing final file), then replaces
   ``run.json`` with ``status: complete`` -- the commit point -- and only then removes the
   parts. Killed before the commit, a rerun repeats the same merge from the same parts;
   killed after it, a rerun sees a complete run. Either way no row is counted twice, which
   ``tests/test_faults.py`` checks by killing after every write step, for one writer and
   for ranks.
5. *No stale reuse.* ``open`` compares options and identity (model folder hash or
   revision, dataset hash, the sha256 of every image used, code hash) on every resume,
   complete or not, and refuses naming what changed. ``load_metrics`` checks a complete
   run's row counts against ``run.json``.

The locks are ``flock(2)`` locks: across machines they need a shared file system that
supports them (NFSv4, Lustre mounted with ``-o flock``, GPFS, BeeGFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from vgutils.context import current as current_context
from vgutils.errors import DataError, UsageError
from vgutils.geometry import TokenLayout

log = logging.getLogger("vgutils.results")

RUN_FILE = "run.json"
ERRORS_FILE = "errors.jsonl"
LOCK_FILE = ".lock"
STATE_LOCK = ".state.lock"
KEYS_FILE = "samples.txt"
KINDS = ("metrics", "head_metrics")
PART = re.compile(r"(?P<kind>.+?)-(?P<tag>(?:r\d+-)?\d+)\.parquet")
"""A part's file name: ``<kind>-NNNNN.parquet`` (one process) or
``<kind>-r<rank>-NNNNN.parquet`` (a rank); ``tag`` names the group across kinds."""
RANK_LOCK = re.compile(r"\.rank-(\d+)\.lock")
RANK_ERRORS = re.compile(r"errors\.r(\d+)\.jsonl")
FaultHook = Callable[[int, str], None]
fault_hook: FaultHook | None = None
"""In-process fault injection (tests): called after each write step of ``finalize``."""


class RunMismatch(UsageError):
    """The folder holds a run made with other options, model, data or code."""


class RunLocked(DataError):
    """Another process is writing the run folder."""


class MissingResults(DataError, FileNotFoundError):
    """The folder holds no results of the kind asked for."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary(path: Path, suffix: str = ".tmp"):
    """A temporary name beside ``path`` for an atomic write: removed if the write fails
    (e.g. a full disk), and the failure a :class:`DataError` naming ``path``."""
    tmp = path.with_name(f".{path.name}{suffix}")
    try:
        yield tmp
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DataError(
                f"{path}: could not write ({err.strerror or err}); the file is unchanged"
            ) from err
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, rename it onto ``path``:
    a crash leaves the old file or the new one, never half of one."""
    with _temporary(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)


_RECORD_START = '{"sample_id": '


def _torn_record(line: str) -> bool:
    """Whether an unparsable errors.jsonl line is the start of a record (a torn append)."""
    return line.startswith(_RECORD_START) or _RECORD_START.startswith(line)


def _append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` in one write, then fsync (a kill may still tear it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    with _temporary(path) as tmp:
        with open(tmp, "wb") as handle:
            frame.to_parquet(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """``pd.read_parquet`` with a one-line :class:`DataError` naming a corrupt file."""
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DataError(
            f"{path}: unreadable parquet file ({type(err).__name__}: {str(err)[:120]}); "
            "delete it (a part: its samples are recomputed; a final file: delete run.json "
            "too) and rerun"
        ) from err


def parquet_rows(path: Path) -> int:
    """Row count from the parquet footer (no data read); DataError if corrupt."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:
        raise DataError(f"{path}: unreadable parquet file ({str(err)[:120]})") from err


def map_file_name(sample_id: str) -> str:
    """A safe, unique file name for a sample's maps."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:80]
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:8]
    return f"{stem}-{digest}.npz"


def read_run_file(folder: Path) -> dict | None:
    """``run.json`` of ``folder`` (None if absent); DataError naming it if malformed."""
    path = Path(folder) / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from err
    try:
        run = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            "the run folder is damaged: delete it (or restore run.json) and rerun"
        ) from err
    if not isinstance(run, dict) or not {"options", "identity", "status"} <= set(run):
        raise DataError(f"{path}: not a vgutils run.json (options, identity, status missing)")
    return run


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "...'"


def describe_differences(old: dict, new: dict) -> list[str]:
    """``key: folder has X, now Y`` for every key of two flat dicts that differs."""
    return [
        f"{key}: folder has {_short(old.get(key))}, now {_short(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def version_changes(old: dict, new: dict) -> str:
    """``torch 2.14.1 -> 2.15.0, numpy 2.4.6 -> 2.5.0`` for the packages whose recorded
    version differs (``none`` for one absent), or an empty string."""
    names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    return ", ".join(f"{n} {old.get(n) or 'none'} -> {new.get(n) or 'none'}" for n in names)


def images_digest(images: dict[str, str]) -> str:
    """One sha256 over ``{image name: sha256}`` (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(images):
        digest.update(f"{name}\0{images[name]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Writer:
    """A process writing a run folder, as its lock file says: ``rank`` of ``world`` for a
    rank of a launcher (None for a single process)."""

    pid: str
    host: str
    since: str
    rank: int | None = None
    world: int | None = None

    @classmethod
    def parse(cls, text: str) -> Writer | None:
        words = text.split()
        if len(words) < 3:
            return None
        if len(words) >= 5 and words[3].isdigit() and words[4].isdigit():
            return cls(words[0], words[1], words[2], int(words[3]), int(words[4]))
        return cls(words[0], words[1], words[2])

    def describe(self) -> str:
        rank = f", rank {self.rank} of {self.world}" if self.rank is not None else ""
        return f"pid {self.pid} on host {self.host} since {self.since}{rank}"


def _probe(path: Path, shared: bool = False) -> Writer | bool | None:
    """Whether a process holds ``path``'s lock (a Writer from its content, or True when
    it says nothing), or None (free, or no such file); the lock is taken and given back
    at once, so call it under ``.state.lock`` only."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return Writer.parse(os.pread(fd, 512, 0).decode(errors="replace")) or True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def split_work(keys: list[str], shard: tuple[int, int] | None) -> list[int]:
    """The indices of ``keys`` (one per image) that rank ``shard[0]`` of ``shard[1]``
    computes, in their given order: the keys sorted by their sha256 (a stable, even
    spread whatever the dataset's order), then every ``world``-th from ``rank``. All
    of them for ``shard=None``."""
    if shard is None:
        return list(range(len(keys)))
    rank, world = shard
    ranked = sorted(range(len(keys)), key=lambda i: (hashlib.sha256(keys[i].encode()).digest(), i))
    return sorted(ranked[rank::world])


class RunStore:
    """One run folder. ``open`` locks it and checks the identity, parts are added as work
    ends, ``complete`` merges when every sample is done (``finalize`` commits); ``close``
    releases the lock (so does the process's end). Any runner can use it: ``main_kind``
    is the kind whose part marks a group done (``metrics`` for extraction, ``answers`` for
    VQA). ``shard``: ``(rank, world)`` when this process is one rank of a launch (its
    parts, errors file and lock are its own; the folder is shared with the other ranks)."""

    def __init__(
        self, folder: Path, main_kind: str = "metrics", shard: tuple[int, int] | None = None
    ):
        self.folder = Path(folder)
        self.main_kind = main_kind
        self.shard = shard if shard is not None and shard[1] > 1 else None
        self.prefix = f"r{self.shard[0]}-" if self.shard else ""
        self.errors_name = f"errors.r{self.shard[0]}.jsonl" if self.shard else ERRORS_FILE
        self.parts = self.folder / "parts"
        self.maps = self.folder / "maps"
        self._lock_fd: int | None = None
        self._rank_fd: int | None = None
        self._state_fd: int | None = None
        self._state_depth = 0
        self._steps = 0
        self.stale_lock: str | None = None  # the dead holder found in .lock, if any
        self.replaced: str | None = None  # why open() replaced a stale run, if it did

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the locks ---
    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(
                f"{self.folder}: cannot create the run folder ({err.strerror})"
            ) from err
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise DataError(f"{self.folder}: the run folder is not writable")

    @contextlib.contextmanager
    def state_lock(self):
        """``.state.lock``, held for a moment (blocking; re-entrant): joining, merging and
        probing the other writers happen under it."""
        if self._state_depth == 0:
            self._make_folder()
            fd = os.open(self.folder / STATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._state_fd = fd
        self._state_depth += 1
        try:
            yield
        finally:
            self._state_depth -= 1
            if self._state_depth == 0 and self._state_fd is not None:
                fcntl.flock(self._state_fd, fcntl.LOCK_UN)
                os.close(self._state_fd)
                self._state_fd = None

    def writers(self) -> list[Writer | bool]:
        """The live writers: the single process holding ``.lock``, or the live ranks
        (call under :meth:`state_lock`)."""
        found: list[Writer | bool] = []
        if self._lock_fd is None or self.shard:  # we do not hold .lock exclusively
            single = _probe(self.folder / LOCK_FILE, shared=True)
            if single is not None:
                found.append(single)
        if self.folder.is_dir():
            own = self.shard[0] if self.shard and self._rank_fd is not None else None
            for path in sorted(self.folder.iterdir()):
                match = RANK_LOCK.fullmatch(path.name)
                if match is None or int(match.group(1)) == own:
                    continue
                holder = _probe(path)
                if holder is not None:
                    found.append(holder)
        return found

    def _refuse(self, writers: list, path: Path, why: str = "") -> RunLocked:
        named = [w for w in writers if isinstance(w, Writer)]
        who = named[0].describe() if named else "another process"
        if len(writers) > 1:
            who += f" and {len(writers) - 1} more"
        return RunLocked(
            f"{self.folder} is being written by {who} (lock {path}){why}; wait for it to "
            "finish or use another --out"
        )

    def lock(self) -> None:
        """Take the folder's advisory lock (idempotent): exclusive for a single process,
        shared plus ``.rank-<r>.lock`` for a rank; RunLocked names a holder."""
        if self._lock_fd is not None:
            return
        self._make_folder()
        path = self.folder / LOCK_FILE
        with self.state_lock():
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shard else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                writers = self.writers()
                if not writers:
                    writers = [Writer.parse(os.pread(fd, 512, 0).decode(errors="replace")) or True]
                os.close(fd)
                raise self._refuse(writers, path) from None
            if self.shard is None:
                previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
                self.stale_lock = previous or None  # the holder died without releasing
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {now()}\n".encode(), 0)
                os.fsync(fd)
                self._lock_fd = fd
                return
            rank, world = self.shard
            clash = [
                w
                for w in self.writers()
                if isinstance(w, Writer) and (w.world != world or w.rank == rank)
            ]
            if clash:
                os.close(fd)
                first = clash[0]
                why = (
                    f": rank {rank} is running already"
                    if first.world == world
                    else f": a launch of {first.world} processes is running, this one has {world}"
                )
                raise self._refuse(clash, self.folder / f".rank-{first.rank}.lock", why)
            rank_path = self.folder / f".rank-{rank}.lock"
            rank_fd = os.open(rank_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(rank_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: probed above
            previous = os.pread(rank_fd, 512, 0).decode(errors="replace").strip()
            self.stale_lock = previous or None
            os.ftruncate(rank_fd, 0)
            record = f"{os.getpid()} {socket.gethostname()} {now()} {rank} {world}\n"
            os.pwrite(rank_fd, record.encode(), 0)
            os.fsync(rank_fd)
            self._lock_fd, self._rank_fd = fd, rank_fd

    def close(self) -> None:
        """Release the locks (an empty lock file means: released cleanly)."""
        if self._lock_fd is None:
            return
        own = self._rank_fd if self.shard else self._lock_fd
        with contextlib.suppress(OSError):
            os.ftruncate(own, 0)
        for fd in (self._rank_fd, self._lock_fd):
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._lock_fd = self._rank_fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # --- run.json ---
    def read_run(self) -> dict | None:
        return read_run_file(self.folder)

    def write_run(self, run: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / RUN_FILE, json.dumps(run, indent=2).encode())

    def open(
        self,
        options: dict,
        identity: dict,
        versions: dict,
        *,
        images: dict[str, str] | None = None,
        retry_errors: bool = False,
        keys: list[str] | None = None,
        plan: dict | None = None,
        replace_stale: bool = False,
        option_defaults: dict | None = None,
    ) -> dict:
        """Lock the folder, then start or resume: returns run.json's content. Raises
        ``RunMismatch`` naming what differs when the folder holds a run made with other
        options, model, data or code (complete or not). ``images``: ``{name: sha256}``
        of the images used (recorded, and named when they change). ``retry_errors``:
        forget the skipped samples so that they are computed again (one process only).
        ``keys``: every sample key the run must account for (``samples.txt``; the run is
        complete when each is done); ``plan``: the counts known before any work (e.g.
        ``{"samples": 512}``), kept in run.json for the merge. ``replace_stale``: a
        folder holding a run made with other options, model, data or code, that no other
        process writes, is emptied and started afresh (``self.replaced`` says why).
        ``option_defaults``: options added since runs were first recorded, each with the
        value that a run.json lacking it was made with (such a run resumes)."""
        if retry_errors and self.shard:
            raise UsageError(
                "--retry-errors: run it in one process, not under a launcher (every rank "
                "would forget the others' skipped samples)"
            )
        self.lock()
        with self.state_lock():  # ranks join one at a time
            defaults = option_defaults or {}
            if replace_stale:
                self._replace_stale(options, identity, images, retry_errors, defaults)
            return self._open(
                options, identity, versions, images, retry_errors, keys, plan, defaults
            )

    def _recorded_run(self, option_defaults: dict) -> dict | None:
        """run.json (None if absent), its options completed with ``option_defaults``."""
        run = self.read_run()
        if run is not None:
            run["options"] = {**option_defaults, **run["options"]}
        return run

    def _replace_stale(self, options, identity, images, retry_errors, option_defaults) -> None:
        existing = self._recorded_run(option_defaults)
        if existing is None:
            return
        try:
            self._check_identity(existing, options, identity, images, retry_errors)
        except RunMismatch as err:
            if self.writers():  # ranks of that run are writing it: never wipe
                raise
            self.replaced = str(err)
            self._empty()

    def _open(
        self, options, identity, versions, images, retry_errors, keys, plan, option_defaults
    ) -> dict:
        existing = self._recorded_run(option_defaults)
        if existing is None:
            leftovers = [p.name for p in self._result_files()]
            if leftovers:
                raise DataError(
                    f"{self.folder} holds results ({', '.join(leftovers[:3])}) but no "
                    f"{RUN_FILE}; use another --out or delete them"
                )
            run = {
                "options": options,
                "identity": identity,
                "versions": versions,
                "main_kind": self.main_kind,
                "images": images or {},
                "plan": plan or {},
                "started": now(),
                "finished": None,
                "status": "running",
                "counts": {},
            }
            if keys is not None:  # first: a run.json without it is an older version's
                self._write_keys(keys)
            self.write_run(run)
            (self.folder / ERRORS_FILE).touch()
            return run
        self._check_identity(existing, options, identity, images, retry_errors)
        self._repair_errors()
        existing["identity"] = identity  # equal, or changed only where a retry allows
        if images is not None:
            existing["images"] = images
        if keys is not None and self.expected_keys() != set(keys):
            if self.shard is None or self.expected_keys() is None:  # alone, or an older
                self._write_keys(keys)  # version's run; a retry may turn bad rows good
        existing.setdefault("plan", plan or {})
        if existing["status"] == "complete":
            self._drop_parts()  # left by a crash after the commit
            self.check_final_files(existing)
            if not (retry_errors and self.errors()):
                return existing
            self._reopen(existing)
        elif existing["status"] != "running":
            raise DataError(
                f"{self.folder / RUN_FILE}: status {existing['status']!r} (an interrupted "
                "merge?); rerun that merge or delete the folder"
            )
        elif self.shard is None:  # alone in the folder: what a crash left goes
            self._drop_orphans()
        if retry_errors:
            self.clear_errors()
        changed = version_changes(existing.get("versions") or {}, versions)
        if changed:  # the results will mix samples computed under both
            log.warning(
                "%s: resumed under other package versions than it started with: %s",
                self.folder,
                changed,
            )
            existing.setdefault("earlier_versions", []).append(existing.get("versions"))
            existing["versions"] = versions
        existing["resumed"] = existing.get("resumed", 0) + 1
        return existing

    def _empty(self) -> None:
        """Remove everything but the lock files (a stale run, replaced)."""
        for path in self.folder.iterdir():
            if path.name in (LOCK_FILE, STATE_LOCK) or RANK_LOCK.fullmatch(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _write_keys(self, keys: list[str]) -> None:
        text = "".join(f"{key}\n" for key in sorted(set(keys)))
        atomic_write_bytes(self.folder / KEYS_FILE, text.encode())

    def expected_keys(self) -> set[str] | None:
        """The keys of ``samples.txt`` (None: a run made by an older version)."""
        try:
            text = (self.folder / KEYS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return {line for line in text.split("\n") if line}

    def _check_identity(self, existing, options, identity, images, retry_errors) -> None:
        old_images = existing.get("images") or {}
        old_identity, new_identity = existing["identity"], identity
        if images is not None and old_images:  # compared image by image below
            old_identity = {k: v for k, v in old_identity.items() if k != "images_sha256"}
            new_identity = {k: v for k, v in new_identity.items() if k != "images_sha256"}
        lines = describe_differences(existing["options"], options)
        lines += describe_differences(old_identity, new_identity)
        if images is not None and old_images and old_images != images:
            changed = sorted(
                n for n in set(old_images) | set(images) if old_images.get(n) != images.get(n)
            )
            if retry_errors:  # fixing images no result uses is what a retry is for
                used = self._done_image_names()
                changed = [n for n in changed if Path(n).name in used]
            if changed:
                names = ", ".join(Path(n).name for n in changed[:3])
                more = ", ..." if len(changed) > 3 else ""
                lines.append(f"images: {len(changed)} changed, added or removed ({names}{more})")
        if lines:
            state = "complete" if existing["status"] == "complete" else "unfinished"
            raise RunMismatch(
                f"{self.folder} holds a {state} run made with other options, model, data or "
                f"code ({'; '.join(lines)}); use another --out or delete it"
            )

    def _done_image_names(self) -> set[str]:
        """The ``image`` column of the results so far (file names)."""
        run = self.read_run()
        final = self.folder / f"{self.main_kind}.parquet"
        paths = [final] if run and run["status"] == "complete" else []
        paths += [] if paths else self.part_paths(self.main_kind)
        names: set[str] = set()
        for path in paths:
            if path.exists() and "image" in pq.ParquetFile(path).schema_arrow.names:
                names.update(read_parquet(path, ["image"])["image"])
        return names

    def _result_files(self) -> list[Path]:
        finals = [p for p in self.folder.glob("*.parquet") if p.is_file()]
        parts = sorted(self.parts.glob("*.parquet")) if self.parts.is_dir() else []
        return finals + parts

    def _reopen(self, run: dict) -> None:
        """A complete run becomes a running one whose single part is the final files
        (hard links: no copy): links first, then the ``running`` commit, then cleanup."""
        self.parts.mkdir(parents=True, exist_ok=True)
        number = self._next_number()
        finals = sorted(self.folder.glob("*.parquet"), key=lambda p: p.stem == self.main_kind)
        for final in finals:
            link = self.parts / f"{final.stem}-{number:05d}.parquet"
            link.unlink(missing_ok=True)
            try:
                os.link(final, link)
            except OSError:  # no hard links on this file system
                shutil.copy2(final, link)
        run.update(status="running", finished=None)
        self.write_run(run)
        for final in finals:
            final.unlink()

    # --- parts ---
    def _tags(self, kind: str) -> list[str]:
        """The tags of ``kind``'s parts, every writer's (``00003``, ``r1-00003``)."""
        if not self.parts.is_dir():
            return []
        found = (PART.fullmatch(p.name) for p in self.parts.iterdir())
        return sorted(m.group("tag") for m in found if m and m.group("kind") == kind)

    def _numbers(self, kind: str) -> list[int]:
        """This writer's part numbers of ``kind``."""
        own = re.compile(rf"{re.escape(self.prefix)}(\d+)")
        return sorted(int(m.group(1)) for t in self._tags(kind) if (m := own.fullmatch(t)))

    def _next_number(self) -> int:
        numbers = self._numbers(self.main_kind)
        return numbers[-1] + 1 if numbers else 0

    def part_paths(self, kind: str) -> list[Path]:
        """The parts of ``kind`` that count, every writer's: those whose main-kind part
        exists."""
        return [self.parts / f"{kind}-{tag}.parquet" for tag in self._tags(self.main_kind)]

    def _drop_orphans(self) -> None:
        """Resume of a running run by a single process: final files of an uncommitted
        finalize and parts without their main-kind part (a group half-written by a crash)
        are deleted."""
        for final in self.folder.glob("*.parquet"):
            final.unlink()
        if not self.parts.is_dir():
            return
        counted = set(self._tags(self.main_kind))
        for path in self.parts.iterdir():
            match = PART.fullmatch(path.name)
            if match is None or match.group("tag") not in counted:
                path.unlink()

    def _drop_parts(self) -> None:
        """A complete run: parts and ranks' errors files left by a crash after the commit
        (already in the final files) go."""
        if self.parts.is_dir():
            shutil.rmtree(self.parts)
        for path in self._errors_files()[1:]:
            path.unlink()

    def add_part(self, frames: dict[str, pd.DataFrame]) -> None:
        """Write one part per kind; the main kind's part is written last, so a group
        counts as done only once all its files exist."""
        if self.main_kind not in frames:
            raise ValueError(f"a part needs its {self.main_kind!r} frame")
        self.parts.mkdir(parents=True, exist_ok=True)
        tag = f"{self.prefix}{self._next_number():05d}"
        for kind in sorted(frames, key=lambda k: k == self.main_kind):
            _atomic_parquet(frames[kind], self.parts / f"{kind}-{tag}.parquet")

    # --- progress ---
    def done_ids(self) -> set[str]:
        """Samples already finished (results written, by any writer) or skipped (in an
        errors file)."""
        done: set[str] = set()
        run = self.read_run()
        if run is not None and run["status"] == "complete":
            final = self.folder / f"{self.main_kind}.parquet"
            if final.exists():
                done.update(read_parquet(final, ["sample_id"])["sample_id"])
        else:
            for path in self.part_paths(self.main_kind):
                done.update(read_parquet(path, ["sample_id"])["sample_id"])
        done.update(e["sample_id"] for e in self.errors())
        return done

    def _errors_files(self) -> list[Path]:
        """``errors.jsonl``, then the ranks' ``errors.r<r>.jsonl`` by rank."""
        ranked = []
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if match := RANK_ERRORS.fullmatch(path.name):
                    ranked.append((int(match.group(1)), path))
        return [self.folder / ERRORS_FILE, *(path for _, path in sorted(ranked))]

    def errors(self) -> list[dict]:
        """The skipped samples, each once, from every errors file (:meth:`_read_errors`)."""
        entries, seen = [], set()
        for path in self._errors_files():
            for entry in self._read_errors(path)[0]:
                if entry["sample_id"] not in seen:
                    seen.add(entry["sample_id"])
                    entries.append(entry)
        return entries

    def _read_errors(self, path: Path) -> tuple[list[dict], list[int]]:
        """(the whole entries, the line numbers of torn lines) of one errors file. A torn
        line (a crash mid-append) is reported and ignored (its sample is computed again;
        :meth:`open` removes it); any other bad line is a DataError naming it."""
        if not path.exists():
            return [], []
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from err
        entries, torn = [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or "sample_id" not in entry:
                    raise ValueError("no sample_id")
            except ValueError as err:
                if _torn_record(line):  # a prefix of a record: killed mid-append
                    log.warning("%s:%d: torn line ignored", path, number)
                    torn.append(number)
                    continue
                raise DataError(
                    f"{path}:{number}: not an error record ({err}); fix or delete the line"
                ) from err
            entries.append(entry)
        return entries, torn

    def _repair_errors(self) -> None:
        """The writer's first step on its errors file (and ``errors.jsonl``, which no rank
        appends to): a line torn by a kill mid-append is removed (one atomic rewrite of the
        whole lines, as parts are dropped), so that the file never keeps an unparsable
        line; its sample is computed again."""
        for path in dict.fromkeys([self.folder / self.errors_name, self.folder / ERRORS_FILE]):
            if not path.exists():
                continue
            entries, torn = self._read_errors(path)
            with open(path, "rb") as handle:  # a whole last record whose newline was cut
                size = handle.seek(0, os.SEEK_END)
                unended = size > 0 and os.pread(handle.fileno(), 1, size - 1) != b"\n"
            if not (torn or unended):
                continue
            for number in torn:
                log.warning("%s:%d: torn line removed (a kill mid-append)", path, number)
            atomic_write_bytes(path, "".join(json.dumps(e) + "\n" for e in entries).encode())

    def add_error(self, sample_id: str, source: str, reason: str, image: str | None = None):
        """Append one skipped sample to this writer's errors file (``errors.jsonl``; a
        rank's ``errors.r<r>.jsonl``), flushed to disk at once (after a newline if a crash
        left a torn last line). ``image``: the image's key in the run's ``images`` (a
        retry may find it fixed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = {"sample_id": sample_id, "source": source, "reason": reason}
        if image is not None:
            entry["image"] = image
        line = (json.dumps(entry) + "\n").encode()
        path = self.folder / self.errors_name
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as handle:
                if handle.seek(0, os.SEEK_END) > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = b"\n" + line
        _append_bytes(path, line)

    def clear_errors(self) -> None:
        """Forget every skipped sample (``--retry-errors``): they are computed again."""
        atomic_write_bytes(self.folder / ERRORS_FILE, b"")
        for path in self._errors_files()[1:]:
            path.unlink()

    def save_maps(self, sample_id: str, arrays: dict[str, np.ndarray], layout: TokenLayout):
        """``maps/<sample>.npz``: the arrays plus the TokenLayout, no pickled objects."""
        self.maps.mkdir(parents=True, exist_ok=True)
        path = self.maps / map_file_name(sample_id)
        with _temporary(path, ".tmp.npz") as tmp:
            np.savez(
                tmp,
                sample_id=np.array(sample_id),
                layout_boxes=layout.boxes,
                layout_grids=np.asarray(layout.grids, dtype=np.int64),
                layout_image_size=np.asarray(layout.image_size, dtype=np.int64),
                layout_orders=np.asarray(layout.orders, dtype=str),
                layout_unplaced=np.asarray(layout.unplaced, dtype=np.int64),
                **arrays,
            )
            os.replace(tmp, path)

    # --- the end ---
    def _step(self, what: str) -> None:
        """One write step of ``finalize`` done: the fault-injection point."""
        self._steps += 1
        if fault_hook is not None:
            fault_hook(self._steps, what)
        if current_context().kill_at_step == self._steps:  # $VGUTILS_KILL_AT_STEP
            os.kill(os.getpid(), signal.SIGKILL)

    def complete(self, run: dict) -> bool:
        """Merge the run (:meth:`finalize`) if every key of ``samples.txt`` is done or
        skipped, whoever wrote it; True when the run is complete now (merged here, or
        already by another rank), False while samples are missing. Under
        ``.state.lock``: of several ranks finishing together, one merges."""
        with self.state_lock():
            current = self.read_run()
            if current is not None and current["status"] == "complete":
                run.update(current)
                return True
            missing = self.missing()
            if missing or (missing is None and self.shard):  # None: an older version's run
                return False
            base = run if self.shard is None else (current or run)
            self.finalize(base, self.final_counts(base))
            if base is not run:
                run.update(base)
            return True

    def missing(self) -> set[str] | None:
        """The keys of ``samples.txt`` not done yet (None: no ``samples.txt``)."""
        keys = self.expected_keys()
        return None if keys is None else keys - self.done_ids()

    def final_counts(self, run: dict) -> dict:
        """The counts a merge records: the run's ``plan`` with ``done`` (samples in the
        parts) and ``skipped`` (in the errors files)."""
        skipped = {e["sample_id"] for e in self.errors()}
        done = set()
        for path in self.part_paths(self.main_kind):
            done.update(read_parquet(path, ["sample_id"])["sample_id"])
        return {**run.get("plan", {}), "done": len(done - skipped), "skipped": len(skipped)}

    def finalize(self, run: dict, counts: dict) -> None:
        """Merge the parts (every writer's) into the final files and the ranks' errors
        files into ``errors.jsonl``, commit ``status: complete`` in one atomic replace of
        run.json, then remove the parts (see the module docstring)."""
        if run["status"] == "complete":
            return
        with self.state_lock():
            self._finalize(run, counts)

    def _finalize(self, run: dict, counts: dict) -> None:
        self._steps = 0
        kinds = {self.main_kind}
        if self.parts.is_dir():
            found = (PART.fullmatch(p.name) for p in self.parts.iterdir())
            kinds |= {m.group("kind") for m in found if m}
        rows = {}
        for kind in sorted(kinds):
            paths = [p for p in self.part_paths(kind) if p.exists()]
            if not paths:
                continue
            merged = sort_results(pd.concat([read_parquet(p) for p in paths], ignore_index=True))
            key = [c for c in ("sample_id", "layer", "head") if c in merged.columns]
            if merged.duplicated(key).any():
                raise DataError(f"{self.parts}: {kind} parts hold duplicate rows; delete the run")
            _atomic_parquet(merged, self.folder / f"{kind}.parquet")
            rows[kind] = len(merged)
            self._step(f"wrote {kind}.parquet")
        ranked_errors = self._errors_files()[1:]
        if ranked_errors:  # the ranks' skipped samples, folded into errors.jsonl
            lines = "".join(json.dumps(e) + "\n" for e in self.errors())
            atomic_write_bytes(self.folder / ERRORS_FILE, lines.encode())
            self._step(f"wrote {ERRORS_FILE}")
        run.update(status="complete", finished=now(), counts={**counts, "rows": rows})
        self.write_run(run)
        self._step("committed run.json")
        for path in ranked_errors:
            path.unlink()
            self._step(f"removed {path.name}")
        if self.parts.is_dir():
            for path in sorted(self.parts.iterdir()):
                path.unlink()
                self._step(f"removed {path.name}")
            self.parts.rmdir()
            self._step("removed parts/")

    def check_final_files(self, run: dict) -> None:
        """A complete run's final files exist, are readable and hold the rows run.json
        recorded; DataError naming the file otherwise."""
        for kind, expected in (run.get("counts", {}).get("rows") or {}).items():
            path = self.folder / f"{kind}.parquet"
            if not path.exists():
                raise DataError(f"{path} is missing but {self.folder / RUN_FILE} is complete")
            actual = parquet_rows(path)
            if actual != expected:
                raise DataError(
                    f"{path}: {actual} rows, but {self.folder / RUN_FILE} records {expected}; "
                    "the results were changed after the run: delete the folder and rerun"
                )


def sort_results(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("order", "layer", "head") if k in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def load_metrics(folder: str | Path, kind: str = "metrics") -> pd.DataFrame:
    """Per (sample, layer) metrics of a run (``kind="head_metrics"``: per head too).
    A complete run gives its final file, checked against the row count in run.json; a
    run still in progress gives what its parts hold so far."""
    folder = Path(folder)
    run = read_run_file(folder)
    final = folder / f"{kind}.parquet"
    if run is None or run["status"] == "complete":
        if not final.exists():
            raise MissingResults(f"no {kind} in {folder} (has the extraction run?)")
        frame = read_parquet(final)
        expected = ((run or {}).get("counts", {}).get("rows") or {}).get(kind)
        if expected is not None and len(frame) != expected:
            raise DataError(
                f"{final}: {len(frame)} rows, but {folder / RUN_FILE} records {expected}; "
                "the results were changed after the run: delete the folder and rerun"
            )
        return frame
    main = run.get("main_kind") or ("metrics" if kind in KINDS else kind)
    paths = [p for p in RunStore(folder, main).part_paths(kind) if p.exists()]
    if not paths:
        raise MissingResults(f"no {kind} in {folder} yet (the run has no finished part)")
    return sort_results(pd.concat([read_parquet(p) for p in paths], ignore_index=True))


def partial_answers(folder: str | Path, kind: str = "answers") -> pd.DataFrame:
    """What a run holds so far (:func:`load_metrics`), or an empty frame when no part is
    written yet (a rank whose share was empty, say)."""
    try:
        return load_metrics(folder, kind)
    except MissingResults:
        return pd.DataFrame()


def require_complete(folder: str | Path) -> None:
    """DataError unless ``folder`` holds a complete run (or results made without a
    run.json): a run still being written gives different results later."""
    run = read_run_file(Path(folder))
    if run is not None and run["status"] != "complete":
        state = run_state(folder)
        total = "?" if state.total is None else state.total
        raise DataError(
            f"{folder} is not complete yet ({state.done}/{total} samples done); finish it "
            "first (`python -m vgutils jobs PROFILE --status` shows which ranks are at work)"
        )


def load_maps(folder: str | Path, sample_id: str) -> dict:
    """One sample's saved maps: ``normalized``, ``raw``, ``generic`` ``(layers, N)`` (and
    per-head ``raw_heads``/``generic_heads`` ``(layers, heads, N)`` when saved) plus
    ``layout`` (TokenLayout). A file whose arrays do not match its layout (``N`` image
    tokens, one layer count) is a DataError naming it."""
    path = Path(folder) / "maps" / map_file_name(sample_id)
    if not path.exists():
        raise MissingResults(f"no maps for sample {sample_id!r} in {folder} (--save-maps?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {
                k: data[k] for k in data.files if not k.startswith("layout_") and k != "sample_id"
            }
            out["layout"] = TokenLayout(
                data["layout_boxes"],
                tuple(tuple(int(v) for v in g) for g in data["layout_grids"]),
                tuple(int(v) for v in data["layout_image_size"]),
                tuple(str(v) for v in data["layout_orders"]) if "layout_orders" in data else (),
                tuple(int(v) for v in data["layout_unplaced"]) if "layout_unplaced" in data else (),
            )
    except (OSError, ValueError, KeyError) as err:
        raise DataError(
            f"{path}: unreadable map file ({str(err)[:160]}); delete it and rerun the "
            "extraction with --save-maps"
        ) from err
    problem = _maps_problem(out)
    if problem:
        raise DataError(
            f"{path}: {problem}: the maps do not match their layout; delete the file and "
            "rerun the extraction with --save-maps"
        )
    return out


MAP_ARRAYS = {"normalized": 2, "raw": 2, "generic": 2, "raw_heads": 3, "generic_heads": 3}
"""The map arrays of a maps file and their dimensions (layers[, heads], N)."""


def _maps_problem(maps: dict) -> str | None:
    tokens = maps["layout"].n_tokens
    first = None
    for key, ndim in MAP_ARRAYS.items():
        if key not in maps:
            continue
        array = maps[key]
        if array.ndim != ndim:
            return f"{key} has shape {array.shape}, expected {ndim} dimensions"
        if array.shape[-1] != tokens:
            return f"{key} has {array.shape[-1]} image tokens, its layout {tokens}"
        if first is None:
            first = key
        elif array.shape[0] != maps[first].shape[0]:
            return f"{key} has {array.shape[0]} layers, {first} {maps[first].shape[0]}"
    return None


@dataclass(frozen=True)
class RunState:
    """Where a run folder stands: ``status`` (``not started``, ``running``, ``merging``,
    ``complete``), ``done`` of ``total`` keys (None: unknown, a run started by an older
    version), and the live ``writers`` (:class:`Writer`, or True for one that wrote no
    name)."""

    folder: Path
    status: str
    done: int
    total: int | None
    writers: tuple = ()

    @property
    def missing(self) -> int | None:
        return None if self.total is None else self.total - self.done


def run_state(folder: str | Path) -> RunState:
    """The :class:`RunState` of ``folder`` (reads the parts' sample ids, writes nothing
    but the lock files it probes under)."""
    folder = Path(folder)
    run = read_run_file(folder) if folder.is_dir() else None
    if run is None:
        return RunState(folder, "not started", 0, None)
    if run["status"] == "complete":
        counts = run.get("counts") or {}
        total = int(counts.get("done", 0)) + int(counts.get("skipped", 0))
        return RunState(folder, "complete", total, total)
    store = RunStore(folder, run.get("main_kind", "metrics"))
    writers: list = []
    if os.access(folder, os.W_OK | os.X_OK):
        with store.state_lock():
            writers = store.writers()
    keys = store.expected_keys()
    done = store.done_ids()
    if keys is not None:
        return RunState(folder, run["status"], len(done & keys), len(keys), tuple(writers))
    return RunState(folder, run["status"], len(done), None, tuple(writers))


def merge_run(folder: str | Path) -> RunState:
    """Merge a run whose every sample is done but that nobody merged (its last rank was
    killed while merging, say): what ``jobs PROFILE --merge`` does per job. Refuses
    (:class:`RunLocked`) while a process writes the folder; does nothing to a complete
    run or one with samples missing. Returns the state after."""
    folder = Path(folder)
    run = read_run_file(folder) if folder.is_dir() else None
    if run is None:
        raise DataError(f"{folder} holds no run ({RUN_FILE} missing)")
    if run["status"] != "complete":
        store = RunStore(folder, run.get("main_kind", "metrics"))
        with store.state_lock():
            store.lock()  # no writer may be at work
            try:
                run = store.read_run()
                missing = store.missing()
                if missing is None:
                    raise DataError(
                        f"{folder}: no {KEYS_FILE} (a run started by an older version); "
                        "rerun its job to finish it"
                    )
                if not missing and run["status"] == "running":
                    store.finalize(run, store.final_counts(run))
            finally:
                store.close()
    return run_state(folder)


def _shard_of(folder: Path, run: dict) -> tuple[int, int]:
    shard = run["options"].get("shard")
    if not shard:
        raise UsageError(f"{folder} is not a shard run (made without --shard); nothing to merge")
    return int(shard[0]), int(shard[1])


def check_shard_set(folders: list[Path]) -> list[dict]:
    """The run.json of each folder after checking they form one complete shard set: every
    run complete, same options but the shard, same identity, one shard count, every index
    exactly once. UsageError (or DataError for a damaged run) otherwise."""
    if not folders:
        raise UsageError("no shard folders given")
    seen: dict[Path, Path] = {}
    for folder in folders:
        key = folder.resolve()
        if key in seen:
            raise UsageError(f"{folder} is given twice")
        seen[key] = folder
    runs = []
    for folder in folders:
        run = read_run_file(folder)
        if run is None:
            raise DataError(f"{folder} holds no run ({RUN_FILE} missing)")
        if run["status"] != "complete":
            raise DataError(f"{folder} is not a complete run ({run['status']}); finish it first")
        RunStore(folder, run.get("main_kind", "metrics")).check_final_files(run)
        runs.append(run)
    shards = [_shard_of(f, r) for f, r in zip(folders, runs, strict=True)]
    counts = sorted({n for _, n in shards})
    if len(counts) > 1:
        listed = ", ".join(f"{f} is {i}/{n}" for f, (i, n) in zip(folders, shards, strict=True))
        raise UsageError(f"shards of different shard counts {counts}: {listed}")
    count = counts[0]
    by_index: dict[int, Path] = {}
    for folder, (index, _) in zip(folders, shards, strict=True):
        if index in by_index:
            raise UsageError(f"shard {index}/{count} is given twice: {by_index[index]}, {folder}")
        by_index[index] = folder
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise UsageError(f"incomplete shard set: shard(s) {names} missing; merge all {count}")

    def base(run):
        return {k: v for k, v in run["options"].items() if k != "shard"}

    def same_identity(run):
        return {k: v for k, v in run["identity"].items() if k != "images_sha256"}

    for folder, run in zip(folders[1:], runs[1:], strict=True):
        lines = describe_differences(base(runs[0]), base(run))
        lines += describe_differences(same_identity(runs[0]), same_identity(run))
        if lines:
            raise UsageError(f"{folder} differs from {folders[0]}: {'; '.join(lines)}")
    return runs


def merge_runs(folders: list[Path], out: Path) -> Path:
    """Combine one complete shard set (see :func:`check_shard_set`) into ``out``, a fresh
    folder or one holding this very merge (then it is redone, idempotently). run.json
    says ``merging`` until the final files are written, then ``complete`` (one atomic
    replace), so a crashed merge is recognised and redone."""
    folders = [Path(f) for f in folders]
    runs = check_shard_set(folders)
    order = sorted(range(len(folders)), key=lambda i: runs[i]["options"]["shard"][0])
    folders, runs = [folders[i] for i in order], [runs[i] for i in order]
    main = runs[0].get("main_kind", "metrics")
    images: dict[str, str] = {}
    for run in runs:
        images.update(run.get("images") or {})
    identity = dict(runs[0]["identity"])
    if images:
        identity["images_sha256"] = images_digest(images)
    options = {**runs[0]["options"], "shard": None}
    sources = [str(f.resolve()) for f in folders]
    store = RunStore(out, main)
    with store:
        store.lock()
        existing = store.read_run()
        if existing is not None:
            if existing.get("merged_from") != sources or existing["options"] != options:
                raise UsageError(
                    f"{out} already holds a run ({existing['status']}, not this merge); "
                    "merge into a fresh folder"
                )
        else:
            shard_folders = {f.resolve() for f in folders}
            foreign = [
                p.name
                for p in out.iterdir()
                if p.name != LOCK_FILE
                and not p.name.startswith(".")
                and p.resolve() not in shard_folders
                and not re.fullmatch(r"shard-\d+-of-\d+", p.name)
            ]
            if foreign:
                raise UsageError(
                    f"{out} is not empty ({', '.join(sorted(foreign)[:3])}); merge into a "
                    "fresh folder"
                )
        run = {
            **runs[0],
            "options": options,
            "identity": identity,
            "images": images,
            "status": "merging",
            "finished": None,
            "merged_from": sources,
        }
        store.write_run(run)
        rows = {}
        for kind in sorted({p.stem for f in folders for p in f.glob("*.parquet")}):
            frames = [read_parquet(f / f"{kind}.parquet") for f in folders]
            merged = sort_results(pd.concat(frames, ignore_index=True))
            key = [c for c in ("sample_id", "layer", "head") if c in merged.columns]
            if merged.duplicated(key).any():
                raise DataError(f"the shards hold duplicate {kind} rows; rerun the shards")
            _atomic_parquet(merged, out / f"{kind}.parquet")
            rows[kind] = len(merged)
        errors = {e["sample_id"]: e for f in folders for e in RunStore(f).errors()}
        atomic_write_bytes(
            out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors.values()).encode()
        )
        for folder in folders:
            if (folder / "maps").exists():
                (out / "maps").mkdir(exist_ok=True)
                for path in (folder / "maps").glob("*.npz"):
                    shutil.copy2(path, out / "maps" / path.name)
        first = runs[0]["counts"]
        counts = {
            "samples": first.get("samples"),
            "done": sum(r["counts"].get("done", 0) for r in runs),
            "skipped": len(errors),
            "bad_rows": first.get("bad_rows", 0),
            "rows": rows,
        }
        run.update(status="complete", finished=now(), counts=counts)
        store.write_run(run)
    return out
