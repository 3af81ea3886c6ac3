"""Batches that fit in memory: a Scorer's rows go through the model in chunks of at most its
`batch_size`, and a chunk that runs out of memory halves the batch size for good and is retried
(DESIGN §10: back off instead of failing). The packed scoring pass and the gradient pass both
run this way.

    in_chunks(scorer, len(rows), lambda start, stop: work(rows[start:stop]))
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def in_chunks(scorer, n_rows: int, run: Callable[[int, int], None]) -> None:
    """Call run(start, stop) over row chunks of at most scorer.batch_size, halving it for good
    whenever a chunk runs out of memory."""
    start = 0
    while start < n_rows:
        stop = min(start + scorer.batch_size, n_rows)
        try:
            run(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or scorer.batch_size == 1:
                raise
            scorer.batch_size = max(1, scorer.batch_size // 2)
            log.warning("out of memory at %d prompts per batch; retrying with %d",
                        stop - start, scorer.batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
