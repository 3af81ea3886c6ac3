"""Sparse autoencoders read from disk, as researchers have them (DESIGN §5, paper §4).

    sae = load_sae("path/to/dir")     # SAELens (v6 or older) or EleutherAI sparsify directory
    sae = load_sae("embedded-L2")     # an SAE shipped with the package (SHIPPED; also smollm2-L15)
    sae.site                          # ("resid", 2): the fluentdream site it reads
    pre = sae.pre_acts(x)             # (..., d_in) -> (..., d_sae), before the activation function
    f = sae.encode(x)                 # (..., d_sae) latent activations
    v = sae.latent(x, 123, pre=False) # (...,) one latent, computing no more than it needs

Layouts: SAELens `cfg.json` + `sae_weights.safetensors` (v6 keeps the hook in `metadata.hook_name`;
older versions at the top level, or as `hook_point`); sparsify `cfg.json` + `sae.safetensors` in a
directory named after its hookpoint (`layers.6`, `layers.6.mlp`). Architectures (ARCHITECTURES),
with x~ = normalize(x) - b_dec (b_dec only if apply_b_dec_to_input) and pre = x~ W_enc + b_enc:
  standard  f = relu(pre)
  jumprelu  f = relu(pre) * [pre > relu(threshold)]
  topk      f = relu(pre) on the k largest entries of pre (times |W_dec row| first if
            rescale_acts_by_decoder_norm), 0 elsewhere
  gated     f = [x~ W_enc + b_gate > 0] * relu(pre), pre = x~ (W_enc * exp(r_mag)) + b_mag
"Before the activation function" is SAELens's `hook_sae_acts_pre`: `pre` above. For a gated latent
the gate's and the magnitude's pre-activations are both increasing in x~ . W_enc[:, j], so either
ranks prompts the same way.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

# SAEs that ship inside the package, by name: the embedded model's (experiments/10a_train_sae.py)
# and SmolLM2-135M's (the same script, --preset smollm2), each with its SAE_CARD.md
SHIPPED = {"embedded-L2": Path(__file__).parents[1] / "embedded" / "sae-L2",
           "smollm2-L15": Path(__file__).parents[1] / "smollm2" / "sae-L15"}
ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
# SAELens (TransformerLens) hook names -> fluentdream sites: "resid" L is the residual stream
# entering block L, so a block's output (hook_resid_post) is the next block's input.
HOOKS = {r"blocks\.(\d+)\.hook_resid_pre": ("resid", 0), r"blocks\.(\d+)\.hook_resid_post": ("resid", 1),
         r"blocks\.(\d+)\.hook_mlp_out": ("mlp_out", 0), r"blocks\.(\d+)\.mlp\.hook_post": ("mlp", 0),
         r"blocks\.(\d+)\.mlp\.hook_pre": ("mlp_pre", 0)}
_NEEDS = {"standard": ("W_enc", "b_enc", "W_dec", "b_dec"), "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
          "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
          "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")}


@dataclass(frozen=True, eq=False)
class SAE:
    """An SAE's encoder and where it reads. Tensors float32 on the CPU; moved to the input's device."""
    architecture: str
    site: tuple[str, int]                # (kind, layer), as fluentdream.targets.Site
    W_enc: torch.Tensor                  # (d_in, d_sae)
    b_enc: torch.Tensor                  # (d_sae,); gated: b_gate
    W_dec: torch.Tensor                  # (d_sae, d_in)
    b_dec: torch.Tensor                  # (d_in,)
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    input_scale: float = 1.0             # expected_average_only_in: x is multiplied by this first
    threshold: torch.Tensor | None = None  # jumprelu (d_sae,)
    k: int | None = None                 # topk
    rescale_acts_by_decoder_norm: bool = False
    r_mag: torch.Tensor | None = None    # gated (d_sae,)
    b_mag: torch.Tensor | None = None    # gated (d_sae,)
    label: str = "sae"
    # (tensor name, device, latents) -> that tensor there: EPO calls the encoder every iteration
    _moved: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.architecture == "topk" else ""
        return (f"SAE({self.label!r}, {self.architecture}{extra}, site={self.site}, d_in={self.d_in}, "
                f"d_sae={self.d_sae})")

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def sae_in(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) activations -> (..., d_in) encoder input x~, float32."""
        x = x.float()
        if self.normalize_activations == "constant_norm_rescale":
            x = x * (math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True))
        elif self.normalize_activations == "layer_norm":
            x = x - x.mean(-1, keepdim=True)
            x = x / (x.std(-1, keepdim=True) + 1e-5)
        elif self.input_scale != 1.0:
            x = x * self.input_scale
        return x - self._t("b_dec", x.device) if self.apply_b_dec_to_input else x

    def _t(self, name: str, device, cols=None) -> torch.Tensor:
        """Tensor `name` ("dec_norm": the decoder rows' norms), columns `cols`, on `device`."""
        key = (name, str(device), None if cols is None else tuple(cols))
        if key not in self._moved:
            t = self.W_dec.norm(dim=-1) if name == "dec_norm" else getattr(self, name)
            self._moved[key] = (t if cols is None else t[..., cols]).to(device)
        return self._moved[key]

    def pre_acts(self, x: torch.Tensor, cols=None) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) pre-activations (only latents `cols` if given)."""
        xt = self.sae_in(x)
        if self.architecture == "gated":
            w = self._t("W_enc", xt.device, cols) * self._t("r_mag", xt.device, cols).exp()
            return xt @ w + self._t("b_mag", xt.device, cols)
        pre = xt @ self._t("W_enc", xt.device, cols) + self._t("b_enc", xt.device, cols)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self._t("dec_norm", xt.device, cols)
        return pre

    def _post(self, x: torch.Tensor, pre: torch.Tensor, cols=None) -> torch.Tensor:
        """Activation function on pre-activations (..., c) of latents `cols` (None: all)."""
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self._t("threshold", pre.device, cols).relu())
        if self.architecture == "gated":
            gate = self.sae_in(x) @ self._t("W_enc", pre.device, cols) + self._t("b_enc", pre.device, cols)
            return (gate > 0) * pre.relu()
        return pre.relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae) latent activations."""
        pre = self.pre_acts(x)
        if self.architecture == "topk":
            vals, idx = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return self._post(x, pre)

    def latent(self, x: torch.Tensor, j: int, pre: bool = False) -> torch.Tensor:
        """(..., d_in) -> (...,) latent j, before (pre=True) or after its activation function.
        TopK needs every pre-activation (is j among the k largest?); the others only column j."""
        if self.architecture == "topk":
            every = self.pre_acts(x)
            if pre:
                return every[..., j]
            kth = every.topk(self.k, dim=-1).values[..., -1]
            return torch.where(every[..., j] >= kth, every[..., j].relu(), 0.0)
        p = self.pre_acts(x, cols=[j])
        return (p if pre else self._post(x, p, cols=[j]))[..., 0]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) -> (..., d_in) reconstruction in the normalized input space."""
        if self.rescale_acts_by_decoder_norm:
            f = f / self._t("dec_norm", f.device)
        return f @ self._t("W_dec", f.device) + self._t("b_dec", f.device)


def resolve(path: str | Path) -> Path:
    """A directory, or the name of a shipped SAE (SHIPPED) -> its directory."""
    if str(path) in SHIPPED and not Path(path).exists():
        return SHIPPED[str(path)]
    return Path(path).expanduser()


def load_sae(path: str | Path) -> SAE:
    """Read an SAE directory (SAELens or sparsify layout) or a shipped SAE by name."""
    d = resolve(path)
    if not d.is_dir():
        raise UserError(f"SAE directory {str(path)!r} does not exist; give a directory holding "
                        "cfg.json + sae_weights.safetensors (SAELens) or cfg.json + sae.safetensors "
                        f"(sparsify), or a shipped SAE: {', '.join(SHIPPED)}")
    # cached per directory and file times, so targets of one SAE share its tensors
    stamp = max((f.stat().st_mtime_ns for f in d.iterdir()), default=0)
    return _load(str(d.resolve()), stamp, str(path) if str(path) in SHIPPED else d.name)


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: int, label: str) -> SAE:
    d = Path(path)
    if (d / "cfg.json").is_file() and (d / "sae_weights.safetensors").is_file():
        return _from_saelens(d, _read_json(d / "cfg.json"), label)
    if (d / "cfg.json").is_file() and (d / "sae.safetensors").is_file():
        return _from_sparsify(d, _read_json(d / "cfg.json"), label)
    raise UserError(f"SAE directory {path!r} holds neither cfg.json + sae_weights.safetensors "
                    "(SAELens) nor cfg.json + sae.safetensors (sparsify)")


def _read_json(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"SAE config {str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"SAE config {str(path)!r} must be a JSON object")
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except SafetensorError as e:
        raise UserError(f"SAE weights {str(path)!r} are not a readable safetensors file ({e})") from None


def _site(hook: str, where: Path) -> tuple[str, int]:
    for pattern, (kind, shift) in HOOKS.items():
        if m := re.fullmatch(pattern, hook or ""):
            return kind, int(m[1]) + shift
    raise UserError(f"SAE {str(where)!r} reads hook {hook!r}, which is not supported; allowed: "
                    "blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_mlp_out, "
                    "blocks.L.mlp.hook_pre, blocks.L.mlp.hook_post")


def _architecture(cfg: dict, w: dict, where: Path) -> str:
    """SAELens v6 names it; older configs imply it (activation_fn "topk", a threshold tensor)."""
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    if arch is None:
        arch = "topk" if act == "topk" else "jumprelu" if ("threshold" in w or "log_threshold" in w) else "standard"
        if act not in ("relu", "topk"):
            raise UserError(f"SAE {str(where)!r} uses activation_fn {act!r}; supported: relu, topk")
    if arch not in ARCHITECTURES:
        raise UserError(f"SAE {str(where)!r} has architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return arch


def _from_saelens(d: Path, cfg: dict, label: str) -> SAE:
    w = _read_weights(d / "sae_weights.safetensors")
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if (meta.get("hook_head_index") or cfg.get("hook_head_index") or cfg.get("hook_point_head_index")) is not None:
        raise UserError(f"SAE {str(d)!r} reads one attention head; only whole sites are supported")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise UserError(f"SAE {str(d)!r} has reshape_activations {cfg['reshape_activations']!r}; supported: none")
    site, arch = _site(hook, d), _architecture(cfg, w, d)
    if "log_threshold" in w and "threshold" not in w:
        w["threshold"] = w.pop("log_threshold").exp()
    norm = cfg.get("normalize_activations")
    norm = {None: "none", False: "none", True: "expected_average_only_in"}.get(norm, norm)
    if norm not in NORMALIZATIONS:
        raise UserError(f"SAE {str(d)!r} has normalize_activations {norm!r}; supported: "
                        f"{', '.join(NORMALIZATIONS)}")
    k = cfg["k"] if "k" in cfg else (cfg.get("activation_fn_kwargs") or {}).get("k")
    return _build(arch, site, w, d / "sae_weights.safetensors", cfg, label,
                  apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                  normalize_activations=norm, k=k,
                  input_scale=_input_scale(d, cfg) if norm == "expected_average_only_in" else 1.0,
                  rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)))


def _input_scale(d: Path, cfg: dict) -> float:
    """The expected_average_only_in factor, where it was saved unfolded; SAELens applies none at
    inference otherwise (it folds the factor into the weights when it saves)."""
    scaler = d / "activation_scaler.json"
    factor = _read_json(scaler).get("scaling_factor") if scaler.is_file() else cfg.get("norm_scaling_factor")
    return float(factor) if factor is not None else 1.0


def _from_sparsify(d: Path, cfg: dict, label: str) -> SAE:
    """EleutherAI sparsify: encoder.weight (d_sae, d_in), W_dec (d_sae, d_in); TopK always
    subtracts b_dec; the directory's name is the hookpoint (a block's output, or its MLP's)."""
    if cfg.get("transcode") or cfg.get("activation", "topk") != "topk":
        raise UserError(f"sparsify coder {str(d)!r} is a transcoder or not TopK; supported: TopK SAEs")
    m = re.search(r"(?:^|\.)(?:layers|h)\.(\d+)(\.mlp)?$", d.name)
    if not m:
        raise UserError(f"cannot tell where sparsify SAE {str(d)!r} reads: its directory should be "
                        "named after the hookpoint, e.g. layers.6 or layers.6.mlp")
    site = ("mlp_out", int(m[1])) if m[2] else ("resid", int(m[1]) + 1)
    w = _read_weights(d / "sae.safetensors")
    if "encoder.weight" in w:
        w["W_enc"] = w.pop("encoder.weight").T
    w["b_enc"] = w.pop("encoder.bias", None)
    if w["b_enc"] is None and "W_enc" in w:
        w["b_enc"] = torch.zeros(w["W_enc"].shape[-1])
    return _build("topk", site, w, d / "sae.safetensors", cfg, label, k=cfg.get("k"))


def _build(arch: str, site: tuple[str, int], w: dict, file: Path, cfg: dict, label: str, **kw) -> SAE:
    """Check tensors and shapes (W_enc (d_in, d_sae); W_dec (d_sae, d_in), taken transposed
    when stored (d_in, d_sae)), then make the SAE."""
    missing = [n for n in _NEEDS[arch] if w.get(n) is None]
    if missing:
        raise UserError(f"SAE weights {str(file)!r} lack {', '.join(missing)}, needed by a {arch} "
                        f"SAE (it holds {', '.join(sorted(w)) or 'nothing'})")
    W_enc = w["W_enc"]
    d_in, d_sae = cfg.get("d_in", W_enc.shape[0]), cfg.get("num_latents") or cfg.get("d_sae") or W_enc.shape[-1]
    W_dec = w["W_dec"]
    if W_dec.shape == (d_in, d_sae) and d_in != d_sae:
        W_dec = W_dec.T
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
            **{n: (d_sae,) for n in ("b_enc", "b_gate", "r_mag", "b_mag", "threshold")}}
    for n, t in dict(w, W_enc=W_enc, W_dec=W_dec).items():
        if n in _NEEDS[arch] and tuple(t.shape) != want[n]:
            raise UserError(f"SAE weights {str(file)!r}: {n} has shape {tuple(t.shape)}, expected "
                            f"{want[n]} for d_in {d_in}, d_sae {d_sae}")
    k = kw.get("k")
    if arch == "topk" and not (isinstance(k, int) and 0 < k <= d_sae):
        raise UserError(f"TopK SAE {str(file.parent)!r} has k = {k!r} in cfg.json; allowed 1..{d_sae}")
    gated = arch == "gated"
    return SAE(arch, site, W_enc.contiguous(), w["b_gate" if gated else "b_enc"], W_dec.contiguous(),
               w["b_dec"], threshold=w.get("threshold"), r_mag=w.get("r_mag") if gated else None,
               b_mag=w.get("b_mag") if gated else None, label=label, **kw)
