"""Extraction results on disk: written as samples finish, resumable, merged at the end.

A run folder holds ``run.json`` (options, identities, versions, counts), part files
``parts/{metrics,head_metrics}-NNNNN.parquet`` while running (each written atomically),
``errors.jsonl`` (skipped samples, appended and fsynced), ``maps/<sample>.npz`` with
``--save-maps``, and at the end ``metrics.parquet`` / ``head_metrics.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from vgutils.geometry import TokenLayout

RUN_FILE = "run.json"
ERRORS_FILE = "errors.jsonl"
KINDS = ("metrics", "head_metrics")


class RunMismatch(RuntimeError):
    """The folder holds a run with other options; refusing to mix results."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def map_file_name(sample_id: str) -> str:
    """A safe, unique file name for a sample's maps."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:80]
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:8]
    return f"{stem}-{digest}.npz"


class RunStore:
    """One run folder: ``open`` checks the options, then parts are added as work ends."""

    def __init__(self, folder: Path, main_kind: str = "metrics"):
        self.folder = Path(folder)
        self.main_kind = main_kind
        self.parts = self.folder / "parts"
        self.maps = self.folder / "maps"

    # --- run.json ---
    def read_run(self) -> dict | None:
        path = self.folder / RUN_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def write_run(self, run: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(self.folder / RUN_FILE, json.dumps(run, indent=2).encode())

    def open(self, options: dict, identity: dict, versions: dict) -> dict:
        """Start or resume: returns run.json's content. Raises ``RunMismatch`` naming the
        differing options when the folder holds a run made with other ones."""
        existing = self.read_run()
        if existing is not None:
            differing = {
                key: (existing[section].get(key), new.get(key))
                for section, new in (("options", options), ("identity", identity))
                for key in sorted(set(existing[section]) | set(new))
                if existing[section].get(key) != new.get(key)
            }
            if differing:
                lines = [
                    f"  {k}: folder has {old!r}, now {new!r}" for k, (old, new) in differing.items()
                ]
                raise RunMismatch(
                    f"{self.folder} holds a run made with other options; use another --out "
                    "or delete it. Differences:\n" + "\n".join(lines)
                )
            existing["resumed"] = existing.get("resumed", 0) + (existing["status"] != "complete")
            return existing
        run = {
            "options": options,
            "identity": identity,
            "versions": versions,
            "started": now(),
            "finished": None,
            "status": "running",
            "counts": {},
        }
        self.write_run(run)
        (self.folder / ERRORS_FILE).touch()
        return run

    # --- progress ---
    def done_ids(self) -> set[str]:
        """Samples already finished (results written) or skipped (in errors.jsonl)."""
        done: set[str] = set()
        for path in sorted(self.parts.glob(f"{self.main_kind}-*.parquet")):
            done.update(pd.read_parquet(path, columns=["sample_id"])["sample_id"])
        final = self.folder / f"{self.main_kind}.parquet"
        if final.exists():
            done.update(pd.read_parquet(final, columns=["sample_id"])["sample_id"])
        done.update(e["sample_id"] for e in self.errors())
        return done

    def errors(self) -> list[dict]:
        path = self.folder / ERRORS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def add_error(self, sample_id: str, source: str, reason: str) -> None:
        """Append one skipped sample to errors.jsonl, flushed to disk at once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"sample_id": sample_id, "source": source, "reason": reason}) + "\n"
        with open(self.folder / ERRORS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def add_part(self, frames: dict[str, pd.DataFrame]) -> None:
        """Write one part per kind; the main kind's part is written last, so a sample
        counts as done only once all its files exist."""
        self.parts.mkdir(parents=True, exist_ok=True)
        number = len(list(self.parts.glob(f"{self.main_kind}-*.parquet")))
        for kind in sorted(frames, key=lambda k: k == self.main_kind):
            _atomic_parquet(frames[kind], self.parts / f"{kind}-{number:05d}.parquet")

    def save_maps(self, sample_id: str, arrays: dict[str, np.ndarray], layout: TokenLayout):
        """``maps/<sample>.npz``: the arrays plus the TokenLayout, no pickled objects."""
        self.maps.mkdir(parents=True, exist_ok=True)
        path = self.maps / map_file_name(sample_id)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp,
            sample_id=np.array(sample_id),
            layout_boxes=layout.boxes,
            layout_grids=np.asarray(layout.grids, dtype=np.int64),
            layout_image_size=np.asarray(layout.image_size, dtype=np.int64),
            **arrays,
        )
        os.replace(tmp, path)

    # --- the end ---
    def finalize(self, run: dict, counts: dict) -> None:
        """Merge the parts into the final parquet files (sorted), mark the run complete."""
        kinds = {p.name.rsplit("-", 1)[0] for p in self.parts.glob("*-*.parquet")}
        for kind in sorted(kinds | {self.main_kind}):
            paths = sorted(self.parts.glob(f"{kind}-*.parquet"))
            final = self.folder / f"{kind}.parquet"
            frames = [pd.read_parquet(p) for p in paths]
            if final.exists():
                frames.insert(0, pd.read_parquet(final))
            if not frames:
                continue
            merged = sort_results(pd.concat(frames, ignore_index=True))
            _atomic_parquet(merged, final)
            for path in paths:
                path.unlink()
        if self.parts.exists() and not any(self.parts.iterdir()):
            self.parts.rmdir()
        run.update(status="complete", finished=now(), counts=counts)
        self.write_run(run)


def sort_results(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("order", "layer", "head") if k in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def load_metrics(folder: str | Path, kind: str = "metrics") -> pd.DataFrame:
    """Per (sample, layer) metrics of a run (``kind="head_metrics"``: per head too).
    A run still in progress gives what its parts hold so far."""
    folder = Path(folder)
    final = folder / f"{kind}.parquet"
    frames = [pd.read_parquet(final)] if final.exists() else []
    frames += [pd.read_parquet(p) for p in sorted((folder / "parts").glob(f"{kind}-*.parquet"))]
    if not frames:
        raise FileNotFoundError(f"no {kind} in {folder} (has the extraction run?)")
    return sort_results(pd.concat(frames, ignore_index=True))


def load_maps(folder: str | Path, sample_id: str) -> dict:
    """One sample's saved maps: ``normalized``, ``raw``, ``generic`` ``(layers, N)`` (and
    per-head ``raw_heads``/``generic_heads`` ``(layers, heads, N)`` when saved) plus
    ``layout`` (TokenLayout)."""
    path = Path(folder) / "maps" / map_file_name(sample_id)
    if not path.exists():
        raise FileNotFoundError(f"no maps for sample {sample_id!r} in {folder} (--save-maps?)")
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files if not k.startswith("layout_") and k != "sample_id"}
        out["layout"] = TokenLayout(
            data["layout_boxes"],
            tuple(tuple(int(v) for v in g) for g in data["layout_grids"]),
            tuple(int(v) for v in data["layout_image_size"]),
        )
    return out


def merge_runs(folders: list[Path], out: Path) -> Path:
    """Combine complete shard runs (same options but the shard) into ``out``."""
    runs = [RunStore(f).read_run() for f in folders]
    for folder, run in zip(folders, runs, strict=True):
        if run is None or run["status"] != "complete":
            raise RuntimeError(f"{folder} is not a complete run; finish it first")
    base = {k: v for k, v in runs[0]["options"].items() if k != "shard"}
    for folder, run in zip(folders, runs, strict=True):
        other = {k: v for k, v in run["options"].items() if k != "shard"}
        if other != base or run["identity"] != runs[0]["identity"]:
            raise RunMismatch(f"{folder} was made with other options than {folders[0]}")
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        frames = [
            pd.read_parquet(f / f"{kind}.parquet")
            for f in folders
            if (f / f"{kind}.parquet").exists()
        ]
        if frames:
            _atomic_parquet(
                sort_results(pd.concat(frames, ignore_index=True)), out / f"{kind}.parquet"
            )
    errors = [line for f in folders for line in RunStore(f).errors()]
    (out / ERRORS_FILE).write_text("".join(json.dumps(e) + "\n" for e in errors))
    for f in folders:
        if (f / "maps").exists():
            (out / "maps").mkdir(exist_ok=True)
            for path in (f / "maps").glob("*.npz"):
                shutil.copy2(path, out / "maps" / path.name)
    counts = {
        key: sum(r["counts"].get(key, 0) for r in runs)
        for key in runs[0]["counts"]
        if isinstance(runs[0]["counts"][key], int)
    }
    merged = dict(
        runs[0],
        options={**base, "shard": None},
        counts=counts,
        merged_from=[str(f) for f in folders],
    )
    RunStore(out).write_run(merged)
    return out
