"""Fixed tokens around the optimized ones: the model reads prefix + x + suffix (issue 12).

    ctx = Context.of(lm, fd.EPOConfig(prefix="<|im_start|>user\\n", suffix="<|im_end|>\\n"))
    full = ctx.wrap(x)                      # (B, n) optimized tokens -> (B, P + n + S)
    lo, hi = ctx.ce_span(n)                 # next-token losses CE averages over

For an instruct model the prompt can sit inside its chat template, or inside any fixed context.
Only x is optimized: proposals, mutations, random starts and restarts touch x alone, and the
History records x (the frontier's text is x's text; the context is in the run's config and in
History.meta["prefix_ids"] / ["suffix_ids"]).

CE is the mean loss of x's own tokens, each predicted from everything before it, prefix included:
n terms with a prefix, n - 1 without one (x's first token then has nothing before it, the
paper's definition). The suffix is read by the target, not scored for fluency. Target positions
count in the whole sequence, so "last" is the suffix's last token (x's last without a suffix),
"@3" the whole sequence's fourth token and "max" the largest over all of it. Banned text (a
logit target's goal) and decode -> encode are checked on x alone: the context is fixed, so
x is what the optimizer can change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Context:
    """The fixed token ids before (`prefix`) and after (`suffix`) the optimized tokens."""
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    @classmethod
    def of(cls, lm, cfg) -> "Context":
        """The context of cfg.prefix and cfg.suffix, each text encoded once on its own with
        `lm`'s tokenizer (no special tokens added; special tokens written in the text, such as
        chat-template markers, are kept)."""
        return cls(_encode(lm.tokenizer, cfg.prefix, "prefix"),
                   _encode(lm.tokenizer, cfg.suffix, "suffix"))

    @classmethod
    def of_run(cls, lm, run_dir) -> "Context":
        """The context a run directory's config.json records (none for a run made without one,
        or before the fields existed)."""
        cfg = json.loads((Path(run_dir) / "config.json").read_text())
        return cls.of(lm, SimpleNamespace(prefix=cfg.get("prefix") or "", suffix=cfg.get("suffix") or ""))

    @property
    def P(self) -> int:
        return len(self.prefix)

    @property
    def S(self) -> int:
        return len(self.suffix)

    @property
    def empty(self) -> bool:
        return not self.prefix and not self.suffix

    def length(self, n: int) -> int:
        """Tokens the model reads for n optimized tokens."""
        return self.P + n + self.S

    def first_scored(self) -> int:
        """Index in x of the first token CE scores: 0 after a prefix, else 1."""
        return 0 if self.prefix else 1

    def ce_span(self, n: int) -> tuple[int, int]:
        """(lo, hi): the positions of the whole sequence whose next-token logits predict x's
        scored tokens, x[first_scored():], which sit at positions lo + 1 .. hi."""
        return self.P + self.first_scored() - 1, self.P + n - 1

    def wrap(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) optimized tokens -> (B, P + n + S) on x's device; x itself when empty.
        Rows shorter than n (padded with -1, fluentdream.core.ragged) get the suffix right after
        their last token and the padding after it."""
        if self.empty:
            return x
        B = len(x)
        pre = torch.tensor(self.prefix, dtype=x.dtype, device=x.device).expand(B, self.P)
        post = torch.tensor(self.suffix, dtype=x.dtype, device=x.device).expand(B, self.S)
        out = torch.cat([pre, x, post], dim=1)
        if self.S and bool((x < 0).any()):
            n = x.shape[1]
            out[:, self.P + n:] = -1
            cols = self.P + (x >= 0).sum(1, keepdim=True) + torch.arange(self.S, device=x.device)
            out.scatter_(1, cols, post)
        return out

    def wrap_embeds(self, emb: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, n, d) embeddings of x -> (B, P + n + S, d), the context's rows read from the
        embedding `table` (V, d) as constants, so gradients reach x's embeddings only."""
        if self.empty:
            return emb
        B = len(emb)
        ids = torch.tensor(self.prefix + self.suffix, dtype=torch.long, device=table.device)
        fixed = table.detach()[ids].to(emb.device, emb.dtype)                    # (P + S, d)
        return torch.cat([fixed[:self.P].expand(B, -1, -1), emb,
                          fixed[self.P:].expand(B, -1, -1)], dim=1)


def _encode(tokenizer, text: str, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise UserError(f"{what} {text!r} encodes to no tokens; give text that does, or leave "
                        f"the {what} empty")
    return tuple(ids)
