"""Prompts of several lengths in one array (EPOConfig.operators insert and delete, issue 14).

    ids = pad([[5, 6, 7], [5, 7]], width=4)   # (2, 4): [[5, 6, 7, -1], [5, 7, -1, -1]]
    lengths(ids)                              # (2,): [3, 2]
    rows(ids)                                 # [[5, 6, 7], [5, 7]]

The representation: a (B, W) integer array (torch or numpy) holding each prompt's tokens from
column 0, then PAD (-1) up to the width W, which is EPOConfig.max_len inside a run. A run of fixed
length has no PAD at all, so its arrays are exactly the (B, n) arrays of before. -1 is never a
token id, so the padded row itself identifies a prompt of its length, and an array of equal-length
prompts needs no lengths beside it. The engine (Scorer, History, frontier) takes and returns this
form; `rows` gives plain token lists for the tokenizer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

PAD = -1


def lengths(ids):
    """(B, W) padded ids -> (B,) number of real tokens of each row (same array type)."""
    return (ids >= 0).sum(-1)


def is_ragged(ids) -> bool:
    """True when some row of (B, W) ids is shorter than W."""
    return bool((ids < 0).any())


def rows(ids) -> list[list[int]]:
    """(B, W) padded ids -> B lists of real tokens."""
    out = ids.tolist()
    if not is_ragged(ids):
        return out
    return [[t for t in row if t >= 0] for row in out]


def pad(prompts: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
    """B token lists -> (B, width) int64, PAD after each prompt; width defaults to the longest."""
    width = max((len(p) for p in prompts), default=0) if width is None else width
    out = np.full((len(prompts), width), PAD, dtype=np.int64)
    for i, p in enumerate(prompts):
        if len(p) > width:
            raise ValueError(f"a prompt of {len(p)} tokens does not fit width {width}")
        out[i, :len(p)] = p
    return out


def widen(ids: torch.Tensor, width: int) -> torch.Tensor:
    """(B, W) padded ids -> (B, width), width >= W, with more PAD columns."""
    if ids.shape[1] >= width:
        return ids
    return torch.cat([ids, ids.new_full((len(ids), width - ids.shape[1]), PAD)], dim=1)
