"""Launchers (torchrun, ``accelerate launch``, SLURM arrays, ``srun``): which share of the
work this process does, read from the launcher's environment in ONE place and passed
down. Nothing below the CLI imports this module or reads these variables: the runners
get the share as an argument (``shard=(rank, world)``), and :func:`start` puts the local
rank into the context (:attr:`vgutils.context.Context.local_rank`, where ``device: auto``
picks this process's GPU).

Where the rank and the world size come from (:func:`detect`), the first that applies:

1. ``--shard I/N`` on the command line;
2. ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``LOCAL_WORLD_SIZE``): ``torchrun`` and
   ``accelerate launch``; their ranks are global across machines;
3. ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` inside an ``srun`` step
   (``SLURM_STEP_ID`` set: a batch script alone also has ``SLURM_PROCID=0`` and
   ``SLURM_NTASKS`` but is one process);

and, around 2 or 3, an ``sbatch --array`` (``SLURM_ARRAY_TASK_ID``,
``SLURM_ARRAY_TASK_COUNT``, ``_MIN``, ``_STEP``): array task ``t`` of ``T`` running ``w``
processes each gives ranks ``t * w + rank`` of ``T * w``.

The processes open no process group (a rank that crashes is rerun alone), and
:func:`start` removes the torch launcher variables from the environment once they are
read, so that no library below (transformers' ``device_map``, its tensor-parallel
``DistributedConfig``, accelerate's ``PartialState``) sees a distributed run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vgutils import context
from vgutils.errors import DataError, UsageError

TORCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)
"""What torchrun / ``accelerate launch`` set per process; :func:`start` removes them."""


@dataclass(frozen=True)
class Launch:
    """This process's share: ``rank`` of ``world`` processes, its ``local_rank`` among the
    ``local_world`` processes of its machine (None: not launched), and ``source``: which
    variables said so."""

    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    local_world: int | None = None
    source: str = "one process"

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for the runners; None for a single process."""
        return (self.rank, self.world) if self.world > 1 else None

    def describe(self) -> str:
        """One line: ``rank 1 of 8 (torchrun / accelerate launch: RANK, WORLD_SIZE;
        local rank 1)``."""
        if self.world == 1 and self.local_rank is None:
            return "one process"
        local = f"; local rank {self.local_rank}" if self.local_rank is not None else ""
        return f"rank {self.rank} of {self.world} ({self.source}{local})"


def _int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"${name}={text!r}: not a whole number") from None


def _torch(environ: Mapping[str, str]) -> Launch | None:
    world = _int(environ, "WORLD_SIZE")
    if world is None:
        return None
    rank = _int(environ, "RANK")
    if rank is None or not 0 <= rank < world:
        raise UsageError(
            f"$WORLD_SIZE={world} but $RANK={environ.get('RANK')!r}: expected 0 <= RANK < "
            "WORLD_SIZE (torchrun and accelerate launch set both)"
        )
    return Launch(
        rank,
        world,
        _int(environ, "LOCAL_RANK"),
        _int(environ, "LOCAL_WORLD_SIZE"),
        "torchrun / accelerate launch: RANK, WORLD_SIZE",
    )


def _srun(environ: Mapping[str, str]) -> Launch | None:
    if not environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEP_ID") == "batch":
        return None  # a batch script: SLURM_PROCID=0 there too, but it is one process
    tasks = _int(environ, "SLURM_STEP_NUM_TASKS") or _int(environ, "SLURM_NTASKS")
    if tasks is None:
        return None
    rank = _int(environ, "SLURM_PROCID") or 0
    if not 0 <= rank < tasks:
        raise UsageError(f"$SLURM_PROCID={rank} outside 0..{tasks - 1} ($SLURM_NTASKS={tasks})")
    local = _int(environ, "SLURM_LOCALID")
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_NTASKS_PER_NODE")
    local_world = None
    if per_node and per_node.split("(")[0].split(",")[0].isdigit():
        local_world = int(per_node.split("(")[0].split(",")[0])  # "4(x2)": 4 on each node
    return Launch(rank, tasks, local, local_world, "srun: SLURM_PROCID, SLURM_NTASKS")


def _array(environ: Mapping[str, str]) -> tuple[int, int] | None:
    task = _int(environ, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    count = _int(environ, "SLURM_ARRAY_TASK_COUNT")
    low = _int(environ, "SLURM_ARRAY_TASK_MIN")
    step = _int(environ, "SLURM_ARRAY_TASK_STEP") or 1
    high = _int(environ, "SLURM_ARRAY_TASK_MAX")
    if count is None or low is None:
        raise UsageError(
            f"$SLURM_ARRAY_TASK_ID={task} without $SLURM_ARRAY_TASK_COUNT and "
            "$SLURM_ARRAY_TASK_MIN: cannot tell this task's share; give --shard I/N"
        )
    index, off = divmod(task - low, step)
    regular = high is None or (high - low) // step + 1 == count
    if off or not 0 <= index < count or not regular:
        raise UsageError(
            f"SLURM array task {task} (min {low}, max {high}, step {step}, count {count}): "
            "not a regular range such as --array=0-31 or 1-64:2; use one, or give "
            "--shard I/N"
        )
    return index, count


def detect(
    environ: Mapping[str, str] | None = None, shard: tuple[int, int] | None = None
) -> Launch:
    """This process's :class:`Launch` from ``shard`` (``--shard I/N``) or the launcher's
    variables in ``environ`` (default: this process's); see the module docstring. A
    UsageError names a variable that does not make sense."""
    environ = os.environ if environ is None else environ
    inner = _torch(environ) or _srun(environ)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise UsageError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
        local = inner.local_rank if inner else None
        return Launch(index, count, local, inner.local_world if inner else None, "--shard")
    array = _array(environ)
    if array is None:
        return inner or Launch()
    task, tasks = array
    inner = inner or Launch(local_rank=None, source="")
    source = "sbatch --array: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT"
    if inner.world > 1:
        source += f" x {inner.source}"
    return Launch(
        task * inner.world + inner.rank,
        tasks * inner.world,
        inner.local_rank,
        inner.local_world,
        source,
    )


def start(launch: Launch) -> Launch:
    """Make this process run ``launch``: the local rank (and the number of processes on
    this machine) go into the context, where ``device: auto`` becomes this process's GPU
    and ``balanced`` its share of the GPUs; the torch launcher variables are removed from
    the environment (no library below sees a distributed run). Returns ``launch``."""
    for name in TORCH_VARIABLES:
        os.environ.pop(name, None)
    if launch.local_rank is not None or launch.local_world is not None:
        current = context.current()
        context.activate(
            current.replace(local_rank=launch.local_rank, local_world=launch.local_world)
        )
    return launch


def wait_for_run(
    folder: str | Path,
    stall: float = 1800.0,
    poll: float = 5.0,
    say: Callable[[str], object] = print,
) -> None:
    """Wait until the run in ``folder`` is complete: a benchmark run with VGRefine ranks
    the heads of a calibration extraction that other ranks may still be finishing (no
    process group: the run folder is the only channel). A run whose samples are all done
    but that nobody merged is merged here. DataError when no process has written it and
    nothing changed for ``stall`` seconds (its rank stopped: rerun it)."""
    from vgutils.results import RunLocked, merge_run, run_state

    folder = Path(folder)
    last, since, said = None, time.monotonic(), False
    while True:
        state = run_state(folder)
        if state.status == "complete":
            return
        if state.status == "running" and state.missing == 0 and not state.writers:
            try:
                merge_run(folder)
            except RunLocked:  # a rank came back to merge it: wait for it
                pass
            continue
        if state.writers or (state.status, state.done) != last:
            last, since = (state.status, state.done), time.monotonic()
        elif time.monotonic() - since > stall:
            missing = "?" if state.missing is None else state.missing
            raise DataError(
                f"{folder} is not complete ({state.done} done, {missing} missing) and no "
                f"process has written it for {stall / 60:.0f} min: rerun the process that "
                "stopped (`python -m vgutils jobs PROFILE --status`), then this one"
            )
        if not said:
            say(f"waiting for {folder.name} ({state.status}, {state.done} done) to complete")
            said = True
        time.sleep(poll)
