"""Build the offline "embedded" corpus, tokenizer and GPT-NeoX model (DESIGN §6).

Reads top to bottom: Config -> seed -> corpus -> tokenizer -> model -> train -> evaluate -> save.

    python experiments/00_build_embedded_model.py                  # what made the shipped model
    python experiments/00_build_embedded_model.py --preset smoke --out /tmp/fd_smoke   # seconds

Corpus: paragraphs of English documentation text that is already on this machine and permissively
licensed — docstrings of the Python standard library plus its help topics (`pydoc_data.topics`,
PSF-2.0), and the docstrings of a few BSD/Apache/PSF-style licensed packages installed in the venv
(numpy, pandas, matplotlib, networkx, sympy, torch, transformers). Code, doctests and reST markup are
stripped; paragraphs are de-duplicated exactly and split train/validation by a hash of their text.

Tokenizer: byte-level BPE (GPT-2/Pythia style, no prefix space, no BOS) with `<|endoftext|>` as
eos/pad/unk. Model: GPTNeoXForCausalLM (parallel residual, rotary), trained from scratch on CPU
with bf16 autocast, AdamW, linear warmup + cosine decay, on 128-token windows packed from
documents joined by `<|endoftext|>`. Saved in fp16 (fits in 10 MB; loads as fp32 on request).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The corpus and the training live beside this script, so that it reads as the recipe.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedded_corpus import build_corpus, corpus_readme  # noqa: E402
from embedded_training import (blocks, encode_stream, evaluate_ce, make_model, model_card,  # noqa: E402
                               train, train_tokenizer, window_ce)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    preset: str = "full"
    """`full` (the shipped model, ~20 min on 2 CPU cores) or `smoke` (seconds; tiny everything)."""
    out: str = "src/fluentdream/embedded"
    """Directory for the model, tokenizer, MODEL_CARD.md and training_metrics.json (repo-relative or absolute)."""
    corpus_dir: str = "data/corpus"
    """Directory for train.parquet / validation.parquet; `{out}` is replaced by `out`."""
    readme_path: str = "data/README.md"
    """Where the corpus README (sources, licenses, cleaning, token counts) is written; `{out}` as above."""
    seed: int = 0
    """Seed for the document order, batch order, model init and evaluation windows."""
    sources: str = "stdlib,pydoc_topics,numpy,pandas,matplotlib,networkx,sympy,torch,transformers"
    """Comma-separated corpus sources (see embedded_corpus.SOURCES); stdlib and pydoc_topics are PSF-2.0."""
    max_files_per_source: int = 0
    """Read at most this many .py files per package source (0 = all); smoke uses a handful."""
    val_per_mille: int = 20
    """Documents whose sha1(text) mod 1000 is below this go to validation (20 = 2 percent)."""
    min_doc_chars: int = 40
    """Cleaned paragraphs shorter than this are dropped."""
    vocab_size: int = 4096
    """BPE vocabulary size, `<|endoftext|>` included."""
    hidden_size: int = 256
    """Model width d."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (head dim = hidden_size / num_heads)."""
    rotary_pct: float = 0.25
    """Fraction of each head's dims that get rotary embeddings (Pythia: 0.25)."""
    max_position_embeddings: int = 512
    """Rotary table length (longest prompt the model accepts)."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the unembedding (keeps the checkpoint under 10 MB)."""
    context_length: int = 128
    """Training window: tokens fed per sequence (each window predicts context_length tokens)."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    steps: int = 1600
    """Optimizer steps (steps * batch_size * context_length = training tokens), unless train_minutes cuts it short."""
    train_minutes: float = 17.0
    """Wall-clock cap on training (0 = none). The lr schedule follows max(step/steps, elapsed/cap), so a
    slower or busier machine trains on fewer tokens but the build still ends on time."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.05
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms or biases)."""
    beta2: float = 0.98
    """AdamW beta2 (beta1 = 0.9)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    bf16: bool = True
    """bf16 autocast for forward/backward (≈1.7x faster than fp32 on these AVX512-BF16 cores)."""
    threads: int = 1
    """torch CPU threads. 1 is the robust choice on a shared 2-core box:
    2 threads are ~1.4x faster when idle, but 5-20x slower when other jobs compete for the cores."""
    eval_every: int = 250
    """Log held-out CE on eval_blocks validation windows every this many steps."""
    eval_blocks: int = 64
    """Validation windows used for the in-training evaluations (the final one uses all)."""
    save_dtype: str = "float16"
    """Checkpoint dtype on disk (float16 keeps more mantissa than bfloat16; both load as fp32)."""
    n_windows: int = 2000
    """Random 12-token validation windows for the self cross-entropy statistics."""
    window_len: int = 12
    """Prompt length for the window statistics (the paper's 12 tokens)."""


PRESETS = {
    "full": {},
    "smoke": dict(corpus_dir="{out}/corpus", readme_path="{out}/corpus/README.md",
                  sources="stdlib,pydoc_topics", max_files_per_source=12, vocab_size=384,
                  hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
                  context_length=32, batch_size=8, steps=6, train_minutes=0.0, warmup_steps=2, eval_every=3,
                  eval_blocks=8, n_windows=32),
}

def parse_args(argv=None) -> Config:
    """argparse generated from the Config fields; --preset picks the defaults, flags override them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    docs = field_docs()
    for f in dataclasses.fields(Config):
        kw = dict(default=None, help=docs.get(f.name, ""))
        if f.type in ("bool", bool):
            kw["type"] = lambda s: s.lower() in ("1", "true", "yes")
        else:
            kw["type"] = {"int": int, "float": float}.get(str(f.type), str)
        if f.name == "preset":
            kw["choices"] = sorted(PRESETS)
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    ns = vars(p.parse_args(argv))
    preset = ns.pop("preset") or "full"
    values = {**PRESETS[preset], **{k: v for k, v in ns.items() if v is not None}}
    out = values.get("out", Config.out)
    values = {k: (v.replace("{out}", out) if isinstance(v, str) else v) for k, v in values.items()}
    return Config(preset=preset, **values)


def field_docs() -> dict[str, str]:
    """The docstring under each Config field (parsed from this file's source)."""
    tree = ast.parse(Path(__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    docs, last = {}, None
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and last:
            docs[last] = node.value.value
    return docs


def repo_path(p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else REPO / p


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    import pandas as pd
    import torch

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t_start = time.time()
    log(f"config: {json.dumps(dataclasses.asdict(cfg))}")

    # ---- seed ----------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)

    # ---- corpus --------------------------------------------------------------------------------
    splits, versions = build_corpus(cfg, repo_path(cfg.corpus_dir))
    log(f"corpus: {len(splits['train'])} train / {len(splits['validation'])} validation documents "
        f"-> {repo_path(cfg.corpus_dir)}")

    # ---- tokenizer -----------------------------------------------------------------------------
    tokenizer = train_tokenizer(splits["train"].text.tolist(), cfg)
    _, train_ids = encode_stream(tokenizer, splits["train"].text.tolist())
    perm = rng.permutation(len(train_ids))  # shuffle documents before packing them
    eos = tokenizer.eos_token_id
    train_stream = np.fromiter((t for i in perm for t in (*train_ids[i], eos)), dtype=np.uint16)
    val_stream, val_ids = encode_stream(tokenizer, splits["validation"].text.tolist())
    lengths = pd.Series([len(d) + 1 for d in train_ids])
    src_tokens = {k: int(v) for k, v in lengths.groupby(splits["train"].source.values).sum().items()}
    log(f"tokenizer: vocab {len(tokenizer)}; tokens (eos included) train {len(train_stream):,} "
        f"validation {len(val_stream):,}; chars/token {splits['train'].text.str.len().sum() / len(train_stream):.2f}")

    # ---- model ---------------------------------------------------------------------------------
    model = make_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    n_nonembed = n_params - model.get_input_embeddings().weight.numel()
    log(f"model: GPTNeoX {cfg.num_layers}x{cfg.hidden_size}, {n_params:,} parameters "
        f"({n_nonembed:,} non-embedding)")

    # ---- train ---------------------------------------------------------------------------------
    val_blocks = blocks(val_stream, cfg.context_length)
    result = train(model, train_stream, val_blocks, cfg, log)

    # ---- save ----------------------------------------------------------------------------------
    out = repo_path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, cfg.save_dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())  # also loadable by transformers 4.x
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")

    # ---- evaluate what was saved (reloaded in float32) -----------------------------------------
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    val_ce = evaluate_ce(model, val_blocks)
    w = window_ce(model, val_ids, cfg, np.random.default_rng(cfg.seed + 1))
    x = torch.randint(0, len(tokenizer), (256, cfg.window_len))
    with torch.no_grad():
        model(input_ids=x)
        t = time.time()
        for _ in range(5):
            model(input_ids=x)
        fwd_ms = (time.time() - t) / 5 * 1000
    prompt = "The function returns"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    torch.manual_seed(cfg.seed)
    sample = tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=True, top_k=40,
                                             pad_token_id=tokenizer.eos_token_id)[0])
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    metrics = dict(
        architecture="GPTNeoXForCausalLM", hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size, rotary_pct=cfg.rotary_pct,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        parameters=n_params, non_embedding_parameters=n_nonembed, vocab_size=len(tokenizer),
        checkpoint_dtype=cfg.save_dtype, checkpoint_bytes=size,
        corpus_documents={k: len(v) for k, v in splits.items()},
        corpus_tokens={"train": len(train_stream), "validation": len(val_stream)},
        corpus_train_tokens_by_source=src_tokens, source_versions=versions,
        train_tokens=result["train_tokens"], epochs=result["epochs"], steps=result["steps"],
        batch_size=cfg.batch_size, context_length=cfg.context_length,
        train_seconds=result["train_seconds"], total_seconds=round(time.time() - t_start, 1),
        val_ce_nats_per_token=round(val_ce, 4),
        val_ce_definition=(f"mean CE over all non-overlapping {cfg.context_length + 1}-token blocks of the "
                           "validation documents joined (in parquet order) with <|endoftext|>, model "
                           "loaded from disk in float32"),
        window_ce_mean=round(float(w.mean()), 4), window_ce_sd=round(float(w.std(ddof=1)), 4),
        window_ce_threshold_mean_plus_2sd=round(float(w.mean() + 2 * w.std(ddof=1)), 4),
        window_ce_definition=(f"{cfg.n_windows} random {cfg.window_len}-token windows inside validation "
                              "documents; logits at positions 0..n-2 vs tokens 1..n-1, mean over the "
                              f"{cfg.window_len - 1} scored tokens; no BOS"),
        forward_256x12_ms_fp32=round(fwd_ms, 1), sample=sample, history=result["history"],
        config=dataclasses.asdict(cfg), torch=torch.__version__,
        command="python experiments/00_build_embedded_model.py" + (f" --preset {cfg.preset}" if cfg.preset != "full" else ""),
    )
    (out / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(metrics))
    readme = repo_path(cfg.readme_path)
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(corpus_readme(cfg, metrics))

    # ---- where results went --------------------------------------------------------------------
    log(f"held-out CE {val_ce:.4f} nats/token; 12-token window CE {w.mean():.3f} ± {w.std(ddof=1):.3f}; "
        f"256x12 forward {fwd_ms:.0f} ms; checkpoint {size / 1e6:.2f} MB")
    log(f"sample: {sample!r}")
    log(f"model + tokenizer + MODEL_CARD.md + training_metrics.json -> {out}")
    log(f"corpus -> {repo_path(cfg.corpus_dir)}; corpus README -> {readme}")
    return metrics


if __name__ == "__main__":
    main()
