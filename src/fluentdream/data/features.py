"""What mining ranks: every feature of one site (`Features`) and its exact running top-k
(`TopK`), ordered by (activation desc, doc asc, position asc) so that shards merge to the
single-process result (DESIGN §8; paper §3.3-3.5). `mining` scans a corpus with them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..targets.kinds import ResidualDirection, Site, _standardize
from ..targets.sae import SAE


def place_key(doc: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(doc, position) -> one int64 key ordering by doc, then position (positions < 2**32)."""
    return doc * (1 << 32) + pos


@dataclass(frozen=True, eq=False)
class Features:
    """Every feature of one site: all MLP neurons (directions None), or residual directions
    (F, d_model) dotted with the standardized residual, as `ResidualDirection` does (paper §3.5),
    or every latent of an SAE (`sae`, after its activation function, as `SAELatent` does)."""
    site: Site
    directions: torch.Tensor | None = None
    labels: tuple[str, ...] = ()
    sae: SAE | None = None

    def size(self, lm) -> int:
        if self.sae is not None:
            return self.sae.d_sae
        return lm.d_mlp if self.directions is None else len(self.directions)

    def names(self, lm) -> list[str]:
        """Target names, as `parse_target` spells them (L1.N5, resid:L2:v7, sae:NAME:3)."""
        kind, layer = self.site
        if self.sae is not None:
            return [f"sae:{self.sae.label}:{i}" for i in range(self.sae.d_sae)]
        if kind == "mlp":
            return [f"L{layer}.N{i}" for i in range(lm.d_mlp)]
        return [f"resid:L{layer}:{label}" for label in self.labels]

    def values(self, acts: dict) -> torch.Tensor:
        """Captured activations -> (B, n, F) float32 feature values at every position."""
        x = acts[self.site]
        if self.sae is not None:
            return self.sae.encode(x)
        if self.directions is None:
            return x.float()
        return _standardize(x) @ self.directions.to(x.device, torch.float32).T

    def validate(self, lm) -> None:
        kind, layer = self.site
        upper = lm.n_layers + (kind == "resid")
        if not 0 <= layer < upper:
            raise UserError(f"layer {layer} is out of range for {kind} features; allowed "
                            f"0..{upper - 1}")
        if self.directions is not None and (self.directions.ndim != 2 or
                                            self.directions.shape[1] != lm.d_model):
            raise UserError(f"residual directions have shape {tuple(self.directions.shape)}; "
                            f"the model needs (F, {lm.d_model})")
        width = lm.d_mlp if kind in ("mlp", "mlp_pre") else lm.d_model
        if self.sae is not None and self.sae.d_in != width:
            raise UserError(f"SAE input width {self.sae.d_in} does not match the width {width} "
                            f"of the site it reads ({kind} of layer {layer})")


def neurons(layer: int) -> Features:
    """Every MLP hidden unit of `layer` (targets L{layer}.N*)."""
    return Features(("mlp", layer))


def sae_latents(sae: SAE) -> Features:
    """Every latent of `sae` (fluentdream.targets.sae.load_sae), at the site it reads (targets
    sae:NAME:j); the paper's §3.3 comparison, for SAE features."""
    return Features(sae.site, sae=sae)


def random_residual(layer: int, d_model: int, n: int, seed: int = 0) -> Features:
    """n random unit directions of the residual entering `layer`; row i is the vector of target
    resid:L{layer}:v{seed + i}, so dreams and dataset examples name the same direction."""
    rows = [ResidualDirection.random_vector(d_model, seed + i) for i in range(n)]
    return Features(("resid", layer), torch.stack(rows), tuple(f"v{seed + i}" for i in range(n)))


@dataclass
class TopK:
    """Running top-k of F features, each row ordered by (value desc, doc asc, position asc).

    values (F, k) float32, -inf where empty; doc, pos (F, k) int64; windows (F, k, w) token ids.
    """
    values: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    windows: torch.Tensor

    @classmethod
    def empty(cls, n_features: int, k: int, window: int, device=None) -> "TopK":
        shape = (n_features, k)
        return cls(torch.full(shape, -torch.inf, device=device),
                   torch.full(shape, -1, dtype=torch.long, device=device),
                   torch.zeros(shape, dtype=torch.long, device=device),
                   torch.zeros(shape + (window,), dtype=torch.long, device=device))

    def _update(self, values, doc, pos, windows_of: Callable[[torch.Tensor], torch.Tensor]):
        """Merge candidates values/doc/pos (F, N); windows_of(j (F, k)) -> (F, k, w) their windows."""
        k, w = self.values.shape[1], self.windows.shape[2]
        all_v = torch.cat([self.values, values.float().nan_to_num(nan=-torch.inf)], 1)
        all_doc, all_pos = torch.cat([self.doc, doc], 1), torch.cat([self.pos, pos], 1)
        by_key = place_key(all_doc, all_pos).argsort(dim=1, stable=True)
        by_value = (-all_v.gather(1, by_key)).argsort(dim=1, stable=True)
        idx = by_key.gather(1, by_value[:, :k])                                  # (F, k)
        mine = self.windows.gather(1, idx.clamp(max=k - 1)[..., None].expand(-1, -1, w))
        theirs = windows_of((idx - k).clamp(min=0))
        self.windows = torch.where((idx < k)[..., None], mine, theirs)
        self.values, self.doc, self.pos = all_v.gather(1, idx), all_doc.gather(1, idx), all_pos.gather(1, idx)

    def push(self, best: torch.Tensor, arg: torch.Tensor, doc: torch.Tensor, start: torch.Tensor,
             ids: torch.Tensor) -> None:
        """One batch: best, arg (B, F) per-window max and its local position; doc, start (B,);
        ids (B, C) the windows' tokens."""
        w = self.windows.shape[2]
        arg_t = arg.T                                                            # (F, B)
        offsets = torch.arange(1 - w, 1, device=ids.device)

        def windows_of(j):
            last = arg_t.gather(1, j).clamp(min=w - 1)                          # (F, k)
            return ids[j[..., None], last[..., None] + offsets]                 # (F, k, w)
        self._update(best.T, doc[None].expand_as(arg_t), (start[:, None] + arg).T, windows_of)

    def merge(self, other: "TopK") -> None:
        """Fold another top-k (e.g. a Ray shard's) of the same features into this one."""
        w = self.windows.shape[2]
        self._update(other.values, other.doc, other.pos,
                     lambda j: other.windows.gather(1, j[..., None].expand(-1, -1, w)))

    def to(self, device) -> "TopK":
        return TopK(*(t.to(device) for t in (self.values, self.doc, self.pos, self.windows)))

    def only(self, keep: torch.Tensor) -> "TopK":
        """The rows of features where keep (F,) is True; the others emptied (-inf), so `rescore`
        scores none of their windows: choose from the scan's in-context values, re-score the chosen."""
        return TopK(torch.where(keep[:, None], self.values, -torch.inf), self.doc, self.pos, self.windows)

    def kept(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keep (F*k,) bool: the filled entries in row-major order; their feature; their rank)."""
        F, k = self.values.shape
        keep = torch.isfinite(self.values).reshape(-1)
        return keep, torch.arange(F).repeat_interleave(k)[keep.cpu()], torch.arange(k).repeat(F)[keep.cpu()]

    def frame(self, names: Sequence[str]) -> pd.DataFrame:
        """One row per kept example as the scan found it (in context): target, feature, rank,
        activation, window_ids (w,)."""
        keep, feature, rank = self.kept()
        return pd.DataFrame(dict(target=np.asarray(names, dtype=object)[feature.numpy()],
                                 feature=feature.numpy(), rank=rank.numpy(),
                                 activation=self.values.reshape(-1)[keep].cpu().numpy(),
                                 window_ids=list(self.windows.reshape(len(keep), -1)[keep].cpu().numpy())))
