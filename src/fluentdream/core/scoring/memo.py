"""What a Scorer remembers: (target index, prompt) -> (f, ce) of every prompt it has scored, so an
EPO run never sends the same prompt through the model twice (DESIGN §10). Children often repeat
a parent or each other: with a small top-k most of an iteration's children were scored before.

    memo = Memo(size=1_000_000)
    memo.add(dict(zip(prompt_keys(ids, which), zip(f.tolist(), ce.tolist()))))
"""
from __future__ import annotations

import torch

from ..ragged import lengths


class Memo(dict):
    """(target index, prompt) -> (f, ce) of every prompt a Scorer has scored (keys: `prompt_keys`).
    When adding would pass `size` entries it starts afresh: a bounded memory, and a run still
    scores each prompt at most once between clearings."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def add(self, new: dict[bytes, tuple[float, float]]) -> None:
        if len(self) + len(new) > self.size:
            self.clear()
        if len(new) <= self.size:
            self.update(new)


def prompt_keys(ids: torch.Tensor, which: torch.Tensor) -> list[bytes]:
    """(B, W) prompts (padded with -1, fluentdream.core.ragged), (B,) target index -> memo keys:
    target index, length and the prompt's own tokens."""
    return [t.to_bytes(4, "little") + k.to_bytes(4, "little") + row[:k].tobytes()
            for t, k, row in zip(which.tolist(), lengths(ids).tolist(), ids.numpy())]
