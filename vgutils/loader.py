"""Work prepared ahead in background threads while the model runs (images decoded,
processed and tokenised for the next batch during the current forward)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetch(
    items: Iterable[Item], work: Callable[[Item], Result], threads: int = 1, ahead: int = 4
) -> Iterator[Result]:
    """``work(item)`` for every item, yielded in order. With ``threads > 0`` up to
    ``ahead`` items are worked on in that many background threads while the caller
    consumes earlier results; ``threads == 0`` works inline. An exception in ``work``
    is raised where its result would have been yielded."""
    if threads <= 0:
        for item in items:
            yield work(item)
        return
    source = iter(items)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vgutils-loader") as pool:
        try:
            for item in source:
                pending.append(pool.submit(work, item))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
