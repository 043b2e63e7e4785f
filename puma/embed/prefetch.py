"""The process pool that runs ``collate`` (image decoding + preprocessing) ahead of the model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_WORKER_COLLATE: Callable[[list[Any]], Any] | None = None


def _worker_init(collate: Callable[[list[Any]], Any]) -> None:
    # Runs in each forked worker: the collate function (processor inside) is inherited, not pickled.
    global _WORKER_COLLATE
    import torch

    torch.set_num_threads(1)  # one core per worker, as torch's DataLoader does
    _WORKER_COLLATE = collate


def _worker_collate(items: list[Any]) -> Any:
    return _WORKER_COLLATE(items)


class Prefetcher:
    """Runs ``collate`` (image decoding + preprocessing) in worker processes, ahead of the model.

    Unlike a per-shard ``DataLoader``, the workers live for the whole run, so shard boundaries cost
    no worker start-up and the next shard's first batches are prepared while the current shard's
    last ones run. At most ``2 * num_workers`` batches are in flight (bounded memory). Results come
    back in submission order. ``num_workers=0`` collates inline.
    """

    def __init__(self, collate: Callable[[list[Any]], Any], num_workers: int):
        self.collate, self.pool, self.depth = collate, None, max(2 * num_workers, 1)
        if num_workers > 0:
            import torch.multiprocessing as tmp  # registers shared-memory pickling of tensors

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked tokenizers must not use threads
            self.pool = tmp.get_context("fork").Pool(num_workers, initializer=_worker_init, initargs=(collate,))

    def map(self, tagged_items: Iterable[tuple[Any, list[Any]]]) -> Iterator[tuple[Any, Any]]:
        """(tag, items) -> (tag, collated batch), in order."""
        if self.pool is None:
            for tag, items in tagged_items:
                yield tag, self.collate(items)
            return
        from collections import deque

        pending: deque = deque()
        for tag, items in tagged_items:
            pending.append((tag, self.pool.apply_async(_worker_collate, (items,))))
            if len(pending) >= self.depth:
                tag0, res = pending.popleft()
                yield tag0, res.get()
        while pending:
            tag0, res = pending.popleft()
            yield tag0, res.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
