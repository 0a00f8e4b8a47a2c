"""Timing and peak-memory measurement shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch


@dataclass
class Measurement:
    seconds: float  # median wall time of one call
    peak_mib: float  # peak memory above the level before the call (RSS on CPU, CUDA alloc)


def _cpu_peak(fn: Callable[[], object]) -> tuple[float, float]:
    process = psutil.Process()
    base = process.memory_info().rss
    peak = base
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    peak = max(peak, process.memory_info().rss)
    return elapsed, (peak - base) / 2**20


def _cuda_peak(fn: Callable[[], object]) -> tuple[float, float]:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(fn: Callable[[], object], device: str, repeats: int = 3) -> Measurement:
    """Run ``fn`` once to warm up, then ``repeats`` times: median seconds, max peak MiB."""
    runner = _cuda_peak if device.startswith("cuda") else _cpu_peak
    fn()
    results = [runner(fn) for _ in range(repeats)]
    return Measurement(
        seconds=statistics.median(r[0] for r in results),
        peak_mib=max(r[1] for r in results),
    )
