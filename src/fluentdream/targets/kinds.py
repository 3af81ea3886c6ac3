"""Targets: the model internal a dream maximizes, as small named objects (DESIGN §5).

    tgt = fd.parse_target("L1.N5", lm)        # MLP hidden unit 5 of layer 1, last position
    tgt = fd.parse_target("L1.N5@max", lm)    # ... max over positions (or "@3" for position 3)
    tgt = fd.parse_target("logit: dog", lm)   # logit(" dog") - max other logit; bans "dog"
    tgt = fd.parse_target("resid:L2:7", lm)   # standardized residual entering layer 2 . v(seed 7)
    tgt = fd.parse_target("attn:L1.H3.K0", lm)  # attention prob. last query -> key 0, head 3
    tgt = fd.parse_target("sae:/path/to/sae:123", lm)  # latent 123 of an SAE (fluentdream.targets.sae)
    tgt = fd.parse_target("sae:embedded-L2:123", lm)   # ... of the SAE shipped with the package
    tgt = fd.parse_target("L1.N5:pre", lm)    # before the nonlinearity (also sae:...:123:pre)
    tgt = fd.Neuron(layer=1, neuron=5)        # the same objects, built directly

A target declares the sites it reads (`("mlp", L)`: MLP hidden units, the input of the MLP output
projection, (B, n, d_mlp); `("mlp_pre", L)`: the input of the MLP's activation function, (B, n,
d_mlp) (Llama-family: the gate projection); `("mlp_out", L)`: the MLP's output, (B, n, d_model);
`("resid", L)`: residual stream entering block L, (B, n, d_model), L = n_layers is the final one;
`("attn", L)`: attention probabilities (B, heads, n, n)) and maps those activations plus the
logits (B, n, V) to one number per prompt (B,).

A pre-activation target (`pre=True`) names its post-activation twin in `post`, so reports can show
the value comparable with the paper beside the one optimized (DESIGN §5); other targets have
`post = None`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from .sae import SAE, load_sae

Site = tuple[str, int]
Position = int | str  # "last", "max", or an index


def _reduce(per_pos: torch.Tensor, position: Position) -> torch.Tensor:
    """(B, n) per-position values -> (B,) at the chosen position."""
    if position == "last":
        return per_pos[:, -1]
    if position == "max":
        return per_pos.max(dim=1).values
    return per_pos[:, position]


def _pos_suffix(position: Position) -> str:
    return "" if position == "last" else f"@{position}"


def _check_position(position: Position, seq_len: int | None = None) -> None:
    if position in ("last", "max"):
        return
    if not isinstance(position, int) or (seq_len is not None and not -seq_len <= position < seq_len):
        raise UserError(f"position must be 'last', 'max' or an index into the prompt"
                        f"{'' if seq_len is None else f' (-{seq_len}..{seq_len - 1})'}, got {position!r}")


def _check_range(what: str, value: int, upper: int) -> None:
    if not 0 <= value < upper:
        raise UserError(f"{what} {value} is out of range; allowed 0..{upper - 1}")


class Target:
    """Base class: `sites`, `value(acts, logits) -> (B,)`, `validate(lm)`, optional `rejects`."""
    sites: tuple[Site, ...] = ()

    @property
    def name(self) -> str:
        raise NotImplementedError

    def value(self, acts: dict[Site, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, lm) -> None:
        for kind, layer in self.sites:
            upper = lm.n_layers + (1 if kind == "resid" else 0)
            _check_range(f"layer for {self.name}:", layer, upper)

    @property
    def post(self) -> Target | None:
        """The same feature after its activation function, for a pre-activation target."""
        return None

    def rejects(self, texts: list[str]) -> np.ndarray:
        """(B,) bool: prompts this target refuses (they score -inf and are never kept)."""
        return np.zeros(len(texts), dtype=bool)

    def check_seq_len(self, seq_len: int) -> None:
        """Raise ValueError if the target reads a position that seq_len-token prompts lack."""
        _check_position(getattr(self, "position", "last"), seq_len)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neuron(Target):
    """MLP hidden unit `neuron` of `layer`, after the nonlinearity (paper §3.2: LX.NY), or with
    pre=True its input to the activation function (Llama-family: the gate's pre-activation)."""
    layer: int
    neuron: int
    position: Position = "last"
    pre: bool = False

    @property
    def sites(self):
        return (("mlp_pre" if self.pre else "mlp", self.layer),)

    @property
    def name(self) -> str:
        return f"L{self.layer}.N{self.neuron}{':pre' if self.pre else ''}{_pos_suffix(self.position)}"

    @property
    def post(self) -> Neuron | None:
        return replace(self, pre=False) if self.pre else None

    def value(self, acts, logits):
        return _reduce(acts[self.sites[0]][:, :, self.neuron], self.position)

    def validate(self, lm):
        _check_range("layer", self.layer, lm.n_layers)
        _check_range(f"neuron of layer {self.layer}", self.neuron, lm.d_mlp)
        _check_position(self.position)


@dataclass(frozen=True)
class Logit(Target):
    """logit(goal) - max other logit (paper §3.1); prompts containing the goal text are rejected."""
    token_id: int
    text: str
    position: Position = "last"

    @property
    def name(self) -> str:
        return f"logit:{self.text}{_pos_suffix(self.position)}"

    def value(self, acts, logits):
        logits = logits.float()
        goal = logits[..., self.token_id]
        others = logits.clone()
        others[..., self.token_id] = -torch.inf
        return _reduce(goal - others.max(dim=-1).values, self.position)

    def rejects(self, texts):
        banned = self.text.strip().lower()
        return np.array([banned in t.lower() for t in texts], dtype=bool)

    def validate(self, lm):
        _check_range("token id", self.token_id, lm.vocab_size)
        _check_position(self.position)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Standardize over the last (model) dimension: zero mean, unit SD (paper §3.5)."""
    x = x.float()
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


@dataclass(frozen=True, eq=False)
class ResidualDirection(Target):
    """Standardized residual stream entering `layer`, dotted with `vector` (d_model,) (paper §3.5)."""
    layer: int
    vector: torch.Tensor
    label: str = "v"
    position: Position = "last"

    @property
    def sites(self):
        return (("resid", self.layer),)

    @property
    def name(self) -> str:
        return f"resid:L{self.layer}:{self.label}{_pos_suffix(self.position)}"

    def value(self, acts, logits):
        x = _standardize(acts["resid", self.layer])              # (B, n, d)
        return _reduce(x @ self.vector.to(x.device, torch.float32), self.position)

    def validate(self, lm):
        _check_range("layer", self.layer, lm.n_layers + 1)
        if self.vector.shape != (lm.d_model,):
            raise UserError(f"residual vector has shape {tuple(self.vector.shape)}; "
                            f"the model needs ({lm.d_model},)")
        if not bool(torch.isfinite(self.vector).all()) or not bool(self.vector.any()):
            raise UserError(f"residual vector {self.label!r} is all zeros or holds NaN/inf; "
                            "give a finite vector with at least one nonzero entry")
        _check_position(self.position)

    @staticmethod
    def random_vector(d_model: int, seed: int) -> torch.Tensor:
        """A unit vector, isotropic Gaussian direction drawn from `seed` (our choice; LOG.md)."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(d_model, generator=g)
        return v / v.norm()


@dataclass(frozen=True)
class AttentionEntry(Target):
    """Attention probability from the query at `position` to key `key`, in `head` of `layer`."""
    layer: int
    head: int
    key: int
    position: Position = "last"

    @property
    def sites(self):
        return (("attn", self.layer),)

    @property
    def name(self) -> str:
        return f"attn:L{self.layer}.H{self.head}.K{self.key}{_pos_suffix(self.position)}"

    def value(self, acts, logits):
        probs = acts["attn", self.layer][:, self.head, :, self.key].float()  # (B, n_query)
        return _reduce(probs, self.position)

    def validate(self, lm):
        _check_range("layer", self.layer, lm.n_layers)
        _check_range("head", self.head, lm.n_heads)
        _check_position(self.position)
        if self.key < 0:
            raise UserError(f"key position must be >= 0, got {self.key}")

    def check_seq_len(self, seq_len: int) -> None:
        super().check_seq_len(seq_len)
        _check_range(f"key position (prompts have {seq_len} tokens):", self.key, seq_len)


@dataclass(frozen=True, eq=False)
class SAELatent(Target):
    """Latent `latent` of a sparse autoencoder (fluentdream.targets.sae: SAELens or sparsify files, every
    architecture there), after its activation function, or before it with pre=True."""
    sae: SAE
    latent: int
    position: Position = "last"
    pre: bool = False

    @property
    def sites(self):
        return (self.sae.site,)

    @property
    def name(self) -> str:
        return (f"sae:{self.sae.label}:{self.latent}{':pre' if self.pre else ''}"
                f"{_pos_suffix(self.position)}")

    @property
    def post(self) -> SAELatent | None:
        return replace(self, pre=False) if self.pre else None

    def value(self, acts, logits):
        x = acts[self.sae.site]                                      # (B, n, d_in)
        return _reduce(self.sae.latent(x, self.latent, self.pre), self.position)

    def validate(self, lm):
        kind, layer = self.sae.site
        width = lm.d_mlp if kind in ("mlp", "mlp_pre") else lm.d_model
        _check_range("SAE layer", layer, lm.n_layers + (kind == "resid"))
        if self.sae.d_in != width:
            raise UserError(f"SAE input width {self.sae.d_in} does not match the width {width} of "
                            f"the site it reads ({kind} of layer {layer})")
        _check_range("SAE latent", self.latent, self.sae.d_sae)
        _check_position(self.position)

    @classmethod
    def load(cls, path: str | Path, latent: int, position: Position = "last",
             pre: bool = False) -> SAELatent:
        """Latent `latent` of the SAE in directory `path` (or a shipped SAE's name)."""
        return cls(load_sae(path), latent, position, pre)


@dataclass(frozen=True, eq=False)
class CustomTarget(Target):
    """Any callable (acts, logits) -> (B,) over declared sites; `fn` must be differentiable."""
    label: str
    fn: Callable[[dict, torch.Tensor], torch.Tensor]
    sites: tuple[Site, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.label

    def value(self, acts, logits):
        return self.fn(acts, logits)


_POS = r"(?:@(last|max|-?\d+))?"


def _load_vector(path: str) -> torch.Tensor:
    """A residual direction (d_model,) from an .npy file of numbers, any shape, flattened."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"residual vector file {path!r} is not a readable .npy array "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); save one with "
                        "numpy.save") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"residual vector file {path!r} holds no numeric array; save one with "
                        "numpy.save")
    return torch.from_numpy(arr.astype(np.float32)).reshape(-1)


def _position(text: str | None) -> Position:
    if text is None or text == "last":
        return "last"
    return "max" if text == "max" else int(text)


def parse_target(spec: str, lm) -> Target:
    """Parse a target shorthand and validate it against `lm` (see the module docstring)."""
    if not spec.startswith("logit:"):
        spec = spec.strip()
    if m := re.fullmatch(r"L(\d+)\.N(\d+)(:pre)?" + _POS, spec):
        tgt = Neuron(int(m[1]), int(m[2]), _position(m[4]), pre=bool(m[3]))
    elif m := re.fullmatch(r"logit:(.+?)" + _POS, spec, flags=re.S):
        text = m[1]  # verbatim after the colon: "logit: dog" targets " dog" (paper §3.1)
        if not text.strip():  # the banned text would be "", which every prompt contains
            raise UserError(f"logit target {text!r} is blank; give a word, e.g. 'logit: dog'")
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(f"logit target {text!r} must be exactly one token, but encodes to "
                            f"{len(ids)}: {[lm.tokenizer.decode([i]) for i in ids]}")
        tgt = Logit(ids[0], text, _position(m[2]))
    elif m := re.fullmatch(r"resid:L(\d+):(.+?)" + _POS, spec):
        layer, src = int(m[1]), m[2]
        if re.fullmatch(r"v?\d+", src):
            seed = int(src.lstrip("v"))
            vec, label = ResidualDirection.random_vector(lm.d_model, seed), f"v{seed}"
        elif Path(src).is_file():
            vec, label = _load_vector(src), Path(src).stem
        else:
            raise UserError(f"residual vector {src!r} is neither an integer seed nor an .npy file")
        tgt = ResidualDirection(layer, vec, label, _position(m[3]))
    elif m := re.fullmatch(r"attn:L(\d+)\.H(\d+)\.K(\d+)" + _POS, spec):
        tgt = AttentionEntry(int(m[1]), int(m[2]), int(m[3]), _position(m[4]))
    elif m := re.fullmatch(r"sae:(.+):(\d+)(:pre)?" + _POS, spec):
        tgt = SAELatent.load(m[1], int(m[2]), _position(m[4]), pre=bool(m[3]))
    else:
        raise UserError(f"cannot parse target {spec!r}; allowed forms: L1.N5, L1.N5:pre, L1.N5@max, "
                        "'logit: dog', resid:L2:7, resid:L2:vec.npy, attn:L1.H3.K0, sae:DIR:123, "
                        "sae:DIR:123:pre, sae:embedded-L2:123")
    tgt.validate(lm)
    return tgt
