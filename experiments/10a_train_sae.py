"""10a — Train the shipped SAEs: TopK sparse autoencoders on a model's residual stream (paper §4
proposes SAE features in place of polysemantic neurons; DESIGN §9, experiment 10).

    python experiments/10a_train_sae.py                   # embedded-L2, ~6 min on 1 CPU thread
    python experiments/10a_train_sae.py --preset smollm2  # smollm2-L15 (`make sae-smollm2`, ~45 min)
    python experiments/10a_train_sae.py --preset smoke --out /tmp/sae   # seconds

The SAE reads the residual stream entering block `layer` (SAELens hook `blocks.L.hook_resid_pre`)
at every position but the first of 128-token windows of a corpus (documents joined by the
tokenizer's end-of-text token, as the models were trained): the embedded model on its own corpus,
SmolLM2-135M on the general corpus (data/general), the text the smollm2 preset mines. TopK (Gao et al. 2024): pre = (x - b_dec) W_enc + b_enc,
the k largest kept and rectified, x_hat = f W_dec + b_dec; loss = FVU + aux * AuxK, where AuxK lets
the latents dead for `dead_tokens` tokens reconstruct the residual error. Decoder rows stay unit
norm. Inputs are scaled to mean norm sqrt(d_in) while training and the scale is folded into the
weights afterwards, so the saved SAE reads raw activations (normalize_activations "none").

Writes `out/`: cfg.json + sae_weights.safetensors (SAELens v6 layout; float32, or float16 for
SmolLM2's to halve the package's growth, the card's numbers measured on the rounded weights),
SAE_CARD.md and training_metrics.json (tokens seen, held-out MSE and FVU, L0, dead latents,
training time).
"""

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

import fluentdream as fd
from fluentdream.files import atomic_write
from fluentdream.data.corpus import CORPORA, DataSource, documents
from fluentdream.targets.sae import SHIPPED

NAME = "10a_train_sae"


@dataclass(frozen=True)
class Config:
    name: str = "embedded-L2"
    """The shipped SAE's name (fluentdream.targets.sae.SHIPPED; `sae:NAME:j` reads latent j)."""
    model: str = "embedded"
    """Model whose residual stream is read (fd.load_model)."""
    dataset: str = "embedded"
    """Corpus the activations come from (DataSource; its train and validation splits)."""
    dtype: str = "float32"
    """Model dtype while collecting activations (the SAE itself trains in float32)."""
    save_dtype: str = "float32"
    """Dtype of the saved weights."""
    threads: int = 1
    """CPU threads (the card states them)."""
    layer: int = 2
    """Residual stream entering this block (a middle layer of the 4-layer embedded model)."""
    d_sae: int = 2048
    """Latents (8x the embedded model's width)."""
    k: int = 32
    """Latents kept per token (TopK)."""
    tokens: int = 2_000_000
    """Training tokens (activations collected once)."""
    epochs: int = 1
    """Passes over them, each in a new random order (SmolLM2's activations are slow to collect
    on a CPU, so its SAE sees each token more than once)."""
    val_tokens: int = 100_000
    """Held-out tokens (the corpus's validation split) for the card's numbers."""
    context: int = 128
    """Window length; position 0 of each window is skipped (it has no context)."""
    batch: int = 4096
    """Tokens per optimizer step."""
    lr: float = 2e-3
    """Adam peak learning rate: 20 warmup steps, then linear decay to 0 at the end of the steps
    or of `max_minutes`, whichever comes first."""
    aux: float = 1 / 32
    """AuxK loss weight (Gao et al. 2024)."""
    dead_tokens: int = 250_000
    """A latent that has not fired for this many training tokens counts as dead for AuxK."""
    max_minutes: float = 8.0
    """Wall-clock cap on the optimizer steps (on a shared 2-core machine it binds)."""
    seed: int = 0


PRESETS = {
    "embedded": Config(),
    # SmolLM2-135M: the residual stream entering block 15 of 30, 4096 latents (~7x d_model 576),
    # on the general corpus. 2M tokens, seen twice (~980 steps): collecting SmolLM2's activations
    # (bf16, blocks 0-14) runs at ~2,300 tokens per second on an idle 2-core AMD EPYC (LOG.md,
    # 2026-12-07), so collection takes ~15 min and the steps stay under the 25-minute cap; the
    # weights ship in float16 (9.4 MB instead of 18.9).
    "smollm2": Config(name="smollm2-L15", model="smollm2-135m", dataset="general",
                      dtype="bfloat16", save_dtype="float16", threads=2, layer=15, d_sae=4096,
                      k=32, tokens=2_000_000, epochs=2, val_tokens=50_000,
                      dead_tokens=500_000, max_minutes=25.0),
    "smoke": Config(d_sae=256, k=8, tokens=20_000, val_tokens=4_000, batch=1024,
                    dead_tokens=5_000),
}


class _Stop(Exception):
    """Raised by the capture hook: nothing after the captured block is needed."""


@torch.no_grad()
def collect(lm, dataset: str, split: str, layer: int, tokens: int, context: int) -> torch.Tensor:
    """Residual stream entering block `layer` at positions 1.. of context windows -> (N, d) fp16."""
    eos = lm.tokenizer.eos_token_id
    stream: list[int] = []
    for _, ids in documents(DataSource(dataset, split=split), lm.tokenizer):
        stream += ids + [eos]
        if len(stream) >= (tokens // (context - 1) + 1) * context:
            break
    n_win = min(len(stream) // context, -(-tokens // (context - 1)))
    windows = torch.tensor(stream[:n_win * context]).view(n_win, context)
    store = []

    def hook(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"])[:, 1:].reshape(-1, lm.d_model)
        store.append(x.float().half())
        raise _Stop
    handle = lm.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with tqdm(total=n_win * (context - 1), desc=f"{split} activations", unit="tok") as bar:
            for chunk in windows.split(32):
                try:
                    lm.trunk(input_ids=chunk, use_cache=False)
                except _Stop:
                    bar.update(chunk.numel() - len(chunk))
    finally:
        handle.remove()
    return torch.cat(store)[:tokens]


def encode(p: dict, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d) -> pre-activations (B, d_sae) and TopK activations (B, d_sae)."""
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    vals, idx = pre.topk(k, dim=-1)
    return pre, torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def train(cfg: Config, acts: torch.Tensor, scale: float) -> tuple[dict, dict]:
    """TopK SAE on scaled activations (N, d) -> parameters (for scaled inputs) and a log."""
    g = torch.Generator().manual_seed(cfg.seed)
    d = acts.shape[1]
    W_dec = F.normalize(torch.randn(cfg.d_sae, d, generator=g), dim=-1)
    p = {"W_enc": W_dec.T.clone(), "b_enc": torch.zeros(cfg.d_sae), "W_dec": W_dec,
         "b_dec": acts[:65536].float().mean(0) * scale}
    for v in p.values():
        v.requires_grad_(True)
    opt = torch.optim.Adam(p.values(), lr=cfg.lr, betas=(0.9, 0.999))
    per_epoch = len(acts) // cfg.batch
    steps, cap = per_epoch * cfg.epochs, cfg.max_minutes * 60
    since_fired = torch.zeros(cfg.d_sae)
    order = torch.cat([torch.randperm(len(acts), generator=g)[:per_epoch * cfg.batch]
                       for _ in range(cfg.epochs)])
    log, t0, taken = [], time.perf_counter(), 0
    for step in range(steps):
        done = max(step / steps, (time.perf_counter() - t0) / cap)    # the schedule's progress
        if done >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min((step + 1) / 20, 1 - done)
        x = acts[order[step * cfg.batch:(step + 1) * cfg.batch]].float() * scale    # (B, d)
        pre, f = encode(p, x, cfg.k)
        err = x - (f @ p["W_dec"] + p["b_dec"])
        total = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total
        dead = since_fired >= cfg.dead_tokens
        loss = fvu
        if dead.any():        # AuxK: the top dead latents reconstruct what the live ones miss
            k_aux = min(d // 2, int(dead.sum()))
            vals, idx = pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ p["W_dec"]
            loss = loss + cfg.aux * (e_hat - err.detach()).pow(2).sum() / total
        opt.zero_grad()
        loss.backward()
        opt.step()
        taken += 1
        with torch.no_grad():
            p["W_dec"].copy_(F.normalize(p["W_dec"], dim=-1))
            fired = (f > 0).any(0)
            since_fired = torch.where(fired, 0.0, since_fired + len(x))
        if step % 50 == 0:
            log.append(dict(step=step, fvu=fvu.item(), dead=int(dead.sum()),
                            seconds=round(time.perf_counter() - t0, 1)))
            print(f"step {step}/{steps}: fvu {fvu.item():.4f}, dead {int(dead.sum())}", flush=True)
    log.append(dict(step=taken - 1, fvu=fvu.item(), dead=int(dead.sum()),
                    seconds=round(time.perf_counter() - t0, 1)))
    info = dict(steps=taken, planned_steps=steps, tokens_seen=taken * cfg.batch,
                train_seconds=time.perf_counter() - t0, log=log)
    return {n: v.detach() for n, v in p.items()}, info


@torch.no_grad()
def evaluate(p: dict, acts: torch.Tensor, k: int) -> dict:
    """Held-out MSE (per token, summed over dims), FVU, mean L0, latents that never fire."""
    x = acts.float()
    fired, l0, sq = torch.zeros(p["W_enc"].shape[1], dtype=torch.bool), 0.0, 0.0
    for chunk in x.split(8192):
        _, f = encode(p, chunk, k)
        sq += float((chunk - f @ p["W_dec"] - p["b_dec"]).pow(2).sum())
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0)
    total = float((x - x.mean(0)).pow(2).sum())
    return dict(mse=sq / len(x), fvu=sq / total, l0=l0 / len(x), dead_latents=int((~fired).sum()),
                val_tokens=len(x))


def save(out: Path, p: dict, cfg: Config, lm, info: dict, metrics: dict) -> None:
    """SAELens v6 layout: cfg.json (metadata holds the hook) + sae_weights.safetensors, each file
    written beside and renamed (a killed run leaves the old SAE whole), readable as the umask
    allows (fluentdream.files.atomic_write)."""
    weights = {n: v.to(getattr(torch, cfg.save_dtype)).contiguous() for n, v in p.items()}
    blob = safetensors_bytes(weights)
    atomic_write(out / "sae_weights.safetensors", lambda fh: fh.write(blob))
    meta = dict(sae_lens_version="6.0.0", sae_lens_training_version=None, model_name=lm.name,
                model_class_name=type(lm.model).__name__, hook_name=f"blocks.{cfg.layer}.hook_resid_pre",
                hook_head_index=None, prepend_bos=False, context_size=cfg.context,
                dataset_path=f"{CORPORA[cfg.dataset].relative_to(CORPORA[cfg.dataset].parents[1])} "
                             f"(fluentdream {cfg.dataset} corpus)", trained_by=f"experiments/{NAME}.py")
    sae_cfg = dict(architecture="topk", d_in=p["W_enc"].shape[0], d_sae=cfg.d_sae, dtype=cfg.save_dtype,
                   device="cpu", apply_b_dec_to_input=True, normalize_activations="none",
                   reshape_activations="none", k=cfg.k, rescale_acts_by_decoder_norm=False,
                   metadata=meta)
    for name, text in (("cfg.json", json.dumps(sae_cfg, indent=2) + "\n"),
                       ("training_metrics.json",
                        json.dumps(dict(config=asdict(cfg), **info, heldout=metrics), indent=2) + "\n"),
                       ("SAE_CARD.md", card(cfg, lm, info, metrics))):
        atomic_write(out / name, lambda fh, text=text: fh.write(text.encode()))


def card(cfg: Config, lm, info: dict, m: dict) -> str:
    d = lm.d_model
    size = cfg.d_sae * d * 2 * torch.finfo(getattr(torch, cfg.save_dtype)).bits / 8 / 1e6
    return f"""# {cfg.name}: a TopK SAE of {lm.name}

`fd.parse_target("sae:{cfg.name}:123", lm)` reads latent 123 (append `:pre` for its
pre-activation). Made by `experiments/{NAME}.py --preset {info['preset']}` (seed {cfg.seed}); SAELens v6
layout, so `sae_lens.SAE.load_from_disk` reads it too.

- Site: residual stream entering block {cfg.layer} of {lm.n_layers} (`blocks.{cfg.layer}.hook_resid_pre`), d_in {d}.
- Architecture: TopK, k = {cfg.k}, {cfg.d_sae} latents, stored in {cfg.save_dtype}
  ({size:.1f} MB). `b_dec` is subtracted from the input.
- Data: 128-token windows of `{CORPORA[cfg.dataset].relative_to(CORPORA[cfg.dataset].parents[1])}` train (documents joined by
  `{lm.tokenizer.eos_token}`), every position but the first, read with the model in {cfg.dtype};
  inputs multiplied by s = {info['input_scale']:.4f} (mean norm sqrt({d})) in training, with
  unit-norm decoder rows; s is folded into the weights (W_enc s, W_dec / s, b_dec / s), so the
  SAE reads raw activations and its decoder rows have norm 1/s.
- Training: {info['tokens_seen']:,} tokens seen ({cfg.tokens:,} collected, {cfg.epochs} pass(es);
  {info['steps']} of {info['planned_steps']} planned Adam
  steps of {cfg.batch} tokens; lr {cfg.lr} with 20 warmup steps, then linear decay to 0 at the
  end of the steps or of the {cfg.max_minutes:g}-minute cap, whichever comes first; AuxK weight
  {cfg.aux:.4f} on latents silent for {cfg.dead_tokens:,} tokens), {info['train_seconds'] / 60:.1f} min
  on {cfg.threads} CPU thread(s) of a shared 2-core machine ({info['total_seconds'] / 60:.1f} min end
  to end, with activation collection: {info['collect_seconds'] / 60:.1f} min,
  {info['collect_tokens_per_second']:.0f} tokens per second).

| held-out ({m['val_tokens']:,} tokens of the validation split, the saved weights) | value |
|---|---|
| MSE (per token, summed over dims) | {m['mse']:.3f} |
| fraction of variance unexplained | {m['fvu']:.4f} |
| L0 (active latents per token) | {m['l0']:.2f} |
| dead latents (never active) | {m['dead_latents']} of {cfg.d_sae} |
"""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    parser.add_argument("--out", type=Path, help="output directory (default: the shipped SAE "
                        "of the preset inside the package; smoke: required)")
    parser.add_argument("--max-minutes", type=float, help="override the wall-clock cap")
    parser.add_argument("--tokens", type=int, help="override the training tokens")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    cfg = replace(cfg, max_minutes=args.max_minutes or cfg.max_minutes,
                  tokens=args.tokens or cfg.tokens)
    if args.out is None and args.preset == "smoke":
        raise ValueError("the smoke preset needs --out DIR (it must not overwrite a shipped SAE)")
    out = args.out or SHIPPED[cfg.name]

    # seed, load
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    lm = fd.load_model(cfg.model, device="cpu", dtype=cfg.dtype)
    # activations (paper §4 future work: SAE features), then the scale that makes mean norm sqrt(d)
    t_collect = time.perf_counter()
    train_acts = collect(lm, cfg.dataset, "train", cfg.layer, cfg.tokens, cfg.context)
    collect_seconds = time.perf_counter() - t_collect
    val_acts = collect(lm, cfg.dataset, "validation", cfg.layer, cfg.val_tokens, cfg.context)
    scale = math.sqrt(lm.d_model) / float(train_acts[:65536].float().norm(dim=-1).mean())
    print(f"{len(train_acts):,} training activations in {collect_seconds:.0f} s; scale {scale:.4f}")
    # train, fold the input scale into the weights: (s x - b) W = (x - b / s)(s W)
    p, info = train(cfg, train_acts, scale)
    p = dict(W_enc=p["W_enc"] * scale, b_enc=p["b_enc"], W_dec=p["W_dec"] / scale,
             b_dec=p["b_dec"] / scale)
    # the card's numbers are those of the weights as saved (float16 for SmolLM2's)
    p = {n: v.to(getattr(torch, cfg.save_dtype)).float() for n, v in p.items()}
    metrics = evaluate(p, val_acts, cfg.k)
    info.update(total_seconds=time.perf_counter() - t0, input_scale=scale, preset=args.preset,
                collect_seconds=collect_seconds,
                collect_tokens_per_second=len(train_acts) / collect_seconds)
    save(out, p, cfg, lm, info, metrics)
    print(json.dumps(metrics))
    print(f"{NAME}: SAE in {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
