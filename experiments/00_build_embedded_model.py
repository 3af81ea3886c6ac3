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
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
import sysconfig
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"


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
    """Comma-separated corpus sources (see SOURCES); stdlib and pydoc_topics are PSF-2.0."""
    max_files_per_source: int = 0
    """Read at most this many .py files per package source (0 = all); smoke uses a handful."""
    val_per_mille: int = 20
    """Documents whose sha1(text) mod 1000 is below this go to validation (20 = 2%)."""
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

# name -> (kind, license, where). kind "module" = docstrings of every .py under that package.
SOURCES = {
    "stdlib": ("stdlib", "PSF-2.0", "docstrings of the Python standard library (tests excluded)"),
    "pydoc_topics": ("topics", "PSF-2.0", "`pydoc_data.topics`: the language reference / help() topic texts"),
    "numpy": ("module", "BSD-3-Clause", "docstrings of numpy"),
    "pandas": ("module", "BSD-3-Clause", "docstrings of pandas"),
    "matplotlib": ("module", "Matplotlib License (PSF-based, BSD-compatible)", "docstrings of matplotlib"),
    "networkx": ("module", "BSD-3-Clause", "docstrings of networkx"),
    "sympy": ("module", "BSD-3-Clause", "docstrings of sympy"),
    "torch": ("module", "BSD-3-Clause (PyTorch's own Python code)", "docstrings of torch (third-party dirs excluded)"),
    "transformers": ("module", "Apache-2.0", "docstrings of transformers"),
}
SKIP_DIRS = {"test", "tests", "testing", "_vendor", "vendor", "vendored", "third_party", "thirdparty",
             "externals", "site-packages", "__pycache__"}


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


# ------------------------------------------------------------------------------------------------
# Corpus: docstrings -> cleaned paragraphs
# ------------------------------------------------------------------------------------------------
CODE_DIRECTIVES = ("code", "code-block", "sourcecode", "doctest", "testcode", "testoutput", "math",
                   "plot", "ipython", "autosummary", "toctree", "image", "figure", "literalinclude",
                   "csv-table", "table", "list-table", "productionlist", "highlight", "raw", "only")
ROLE = re.compile(r":[A-Za-z][\w:.-]*:`(~?)([^`]*)`")
UNDERLINE = re.compile(r"^\s*([-=~^*+#`'\"_.:])\1{2,}\s*$")
STOPWORDS = {"the", "a", "an", "is", "are", "of", "to", "in", "and", "or", "if", "be", "this", "that",
             "it", "for", "with", "as", "by", "not", "on", "which", "from", "will", "can", "when"}


def role_text(m: re.Match) -> str:
    """:func:`~a.b.c` -> c, :class:`a.b` -> a.b, :ref:`text <target>` -> text."""
    tilde, body = m.group(1), m.group(2)
    body = re.sub(r"\s*<[^>]*>$", "", body).strip()
    return body.rsplit(".", 1)[-1] if tilde else body


def strip_blocks(text: str) -> list[str]:
    """Drop fenced code, reST literal blocks (after `::`) and code directives; keep prose lines."""
    out, fence, literal_indent = [], False, None
    for line in text.expandtabs(4).split("\n"):
        s = line.strip()
        if s.startswith("```"):
            fence = not fence
            out.append("")
            continue
        if fence:
            continue
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not s or indent > literal_indent:
                continue
            literal_indent = None
        if s.startswith(".. "):
            name = s[3:].split("::")[0].strip()
            if name in CODE_DIRECTIVES or "::" not in s:  # code, or a comment / link target
                literal_indent = indent
            out.append("")
            continue
        if s.endswith("::"):
            literal_indent = indent
            line = line.rstrip()[:-1] if s != "::" else ""
        out.append(line)
    return out


def is_code_line(s: str) -> bool:
    if s.startswith((">>>", "...", "$ ", "% ", "#", "In [", "Out[")):
        return True
    if re.match(r"^(def|class|import|from|return|raise|yield|for|while|if|elif|else|try|except|with|"
                r"lambda|assert|async|await|print)\b.*[:(=]", s) and not re.search(r"[a-z]{2,}\.\s", s):
        return True
    letters = sum(c.isalpha() or c == " " for c in s)
    return letters < 0.72 * len(s)


def clean_paragraph(lines: list[str]) -> str | None:
    if any(l.strip().startswith(">>>") for l in lines):  # a doctest and its output
        return None
    kept = [l.strip() for l in lines
            if l.strip() and not UNDERLINE.match(l) and not is_code_line(l.strip())]
    if not kept:
        return None
    text = " ".join(kept)
    text = ROLE.sub(role_text, text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)       # `text <url>`_
    text = re.sub(r"``([^`]+)``", r"\1", text)                     # ``literal``
    text = re.sub(r"`([^`]+)`_?", r"\1", text)                     # `interpreted`
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)                  # **bold**
    text = re.sub(r"(?<!\w)\*([^*\s][^*]*?)\*(?!\w)", r"\1", text)  # *emphasis*
    text = re.sub(r"\[([^\]]+)\]\((?:https?://|\.?/)[^)]*\)", r"\1", text)  # [md](link)
    text = re.sub(r"\s+", " ", text).strip()
    words = text.split()
    if len(words) < 6 or not STOPWORDS.intersection(w.lower().strip(",.;:") for w in words):
        return None
    alpha_words = sum(w.strip(",.;:()'\"!?").isalpha() for w in words)
    if alpha_words < 0.6 * len(words) or sum(c.isalpha() or c == " " for c in text) < 0.8 * len(text):
        return None
    return text


def paragraphs(doc: str) -> list[str]:
    out, block = [], []
    for line in strip_blocks(doc) + [""]:
        if line.strip():
            block.append(line)
        elif block:
            p = clean_paragraph(block)
            if p:
                out.append(p)
            block = []
    return out


def iter_py_files(root: Path, limit: int):
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
                   and not p.name.startswith("test_"))
    return files[:limit] if limit else files


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def file_paragraphs(path: Path) -> tuple[int, list[str]]:
    docs = docstrings(path)
    return len(docs), [p for d in docs for p in paragraphs(d)]


def source_paragraphs(name: str, cfg: Config, pool) -> tuple[int, list[str], str]:
    """(number of docstrings, cleaned paragraphs in file order, version string) of one source."""
    kind = SOURCES[name][0]
    if kind == "topics":
        import pydoc_data.topics as t
        topics = sorted(t.topics.items())[: cfg.max_files_per_source or None]
        return len(topics), [p for _, v in topics for p in paragraphs(v)], f"Python {sys.version.split()[0]}"
    if kind == "stdlib":
        root, version = Path(sysconfig.get_paths()["stdlib"]), f"Python {sys.version.split()[0]}"
    else:
        root = Path(importlib.util.find_spec(name).origin).parent  # located, not imported
        version = f"{name} {importlib.metadata.version(name)}"
    results = list(pool.map(file_paragraphs, iter_py_files(root, cfg.max_files_per_source), chunksize=8))
    return sum(n for n, _ in results), [p for _, ps in results for p in ps], version


def build_corpus(cfg: Config):
    import pandas as pd
    from tqdm import tqdm

    rows, seen, versions = [], set(), {}
    with ProcessPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for name in tqdm(cfg.sources.split(","), desc="corpus sources", file=sys.stdout):
            n_docs, paras, versions[name] = source_paragraphs(name, cfg, pool)
            n_before = len(rows)
            for para in paras:
                if len(para) >= cfg.min_doc_chars and para not in seen:
                    seen.add(para)
                    rows.append((para, name))
            print(f"  {name}: {n_docs} docstrings -> {len(rows) - n_before} unique paragraphs", flush=True)
    df = pd.DataFrame(rows, columns=["text", "source"])
    h = df.text.map(lambda s: int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) % 1000)
    splits = {"train": df[h >= cfg.val_per_mille].reset_index(drop=True),
              "validation": df[h < cfg.val_per_mille].reset_index(drop=True)}
    out = repo_path(cfg.corpus_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, d in splits.items():
        d.to_parquet(out / f"{split}.parquet", compression="zstd", index=False)
    return splits, versions


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], cfg: Config):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=EOS,
                                   bos_token=EOS, model_max_length=cfg.max_position_embeddings,
                                   add_bos_token=False, clean_up_tokenization_spaces=False)


def encode_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All documents, each followed by <|endoftext|>, as one uint16 token stream."""
    eos = tokenizer.eos_token_id
    ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.uint16), ids


# ------------------------------------------------------------------------------------------------
# Model, training, evaluation
# ------------------------------------------------------------------------------------------------
def make_model(cfg: Config, tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    eos = tokenizer.eos_token_id
    mcfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         intermediate_size=4 * cfg.hidden_size, rotary_pct=cfg.rotary_pct,
                         max_position_embeddings=cfg.max_position_embeddings, use_parallel_residual=True,
                         tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTNeoXForCausalLM(mcfg)


def blocks(stream: np.ndarray, length: int):
    """Non-overlapping windows of length+1 tokens (inputs = [:-1], targets = [1:])."""
    import torch

    n = (len(stream) - 1) // length
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def lm_loss(model, x, reduction="mean"):
    import torch.nn.functional as F

    logits = model(input_ids=x[:, :-1]).logits.float()
    return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction=reduction)


def evaluate_ce(model, val_blocks, batch_size=64, bf16=False) -> float:
    import torch

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(val_blocks), batch_size):
            x = val_blocks[i: i + batch_size]
            tot += lm_loss(model, x, reduction="sum").item()
            n += x[:, 1:].numel()
    model.train()
    return tot / n


def window_ce(model, val_ids: list[list[int]], cfg: Config, rng) -> np.ndarray:
    """Self cross-entropy of random window_len-token windows inside validation documents:
    logits at positions 0..n-2 scored against tokens 1..n-1, mean over the n-1 scored tokens."""
    import torch
    import torch.nn.functional as F

    n = cfg.window_len
    docs = [d for d in val_ids if len(d) >= n]
    starts = np.array([len(d) - n + 1 for d in docs])
    picks = rng.choice(starts.sum(), size=cfg.n_windows, replace=False)
    cum = np.cumsum(starts)
    which = np.searchsorted(cum, picks, side="right")
    offs = picks - np.concatenate([[0], cum[:-1]])[which]
    x = torch.tensor([docs[w][o: o + n] for w, o in zip(which, offs)])
    with torch.no_grad():
        logits = torch.cat([model(input_ids=c).logits.float() for c in x.split(256)])
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none")
    return ce.view(len(x), n - 1).mean(1).numpy()


def lr_at(step: int, progress: float, cfg: Config) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, progress)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, train_stream, val_blocks, cfg: Config, log):
    import torch
    from tqdm import tqdm

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2))
    data = blocks(train_stream, cfg.context_length)
    rng = np.random.default_rng(cfg.seed)
    order, pos, epoch = rng.permutation(len(data)), 0, 0
    eval_sub = val_blocks[np.linspace(0, len(val_blocks) - 1, min(cfg.eval_blocks, len(val_blocks))).astype(int)]
    history, t0 = [], time.time()
    bar = tqdm(range(cfg.steps), desc="train", mininterval=5, file=sys.stdout)
    cap = cfg.train_minutes * 60
    for step in bar:
        progress = max(step / cfg.steps, (time.time() - t0) / cap if cap else 0.0)
        if progress >= 1:
            log(f"train_minutes={cfg.train_minutes} reached after {step} steps; stopping")
            break
        if pos + cfg.batch_size > len(order):
            order, pos, epoch = rng.permutation(len(data)), 0, epoch + 1
        x = data[order[pos: pos + cfg.batch_size]]
        pos += cfg.batch_size
        lr = lr_at(step, progress, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = lm_loss(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        steps_done = step + 1
        if steps_done % cfg.eval_every == 0 or steps_done == cfg.steps:
            ce = evaluate_ce(model, eval_sub, bf16=cfg.bf16)
            history.append(dict(step=step + 1, train_loss=round(loss.item(), 4), val_ce=round(ce, 4),
                                seconds=round(time.time() - t0, 1)))
            log(f"step {step + 1}/{cfg.steps}  train {loss.item():.3f}  val(sub) {ce:.3f}  "
                f"{time.time() - t0:.0f}s  epoch {epoch + pos / len(order):.2f}")
    bar.close()
    if history[-1]["step"] != steps_done:
        ce = evaluate_ce(model, eval_sub, bf16=cfg.bf16)
        history.append(dict(step=steps_done, train_loss=round(loss.item(), 4), val_ce=round(ce, 4),
                            seconds=round(time.time() - t0, 1)))
    tokens = steps_done * cfg.batch_size * cfg.context_length
    return dict(history=history, train_seconds=round(time.time() - t0, 1), train_tokens=tokens, steps=steps_done,
                epochs=round(tokens / (len(data) * cfg.context_length), 3))


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
    splits, versions = build_corpus(cfg)
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


def model_card(m: dict) -> str:
    c = m["config"]
    hist = "\n    ".join(f"| {h['step']} | {h['train_loss']:.3f} | {h['val_ce']:.3f} | {h['seconds']:.0f} |"
                     for h in m["history"])
    return textwrap.dedent(f"""\
    # fluentdream embedded model

    A small GPT-NeoX (Pythia architecture) language model trained from scratch on CPU, shipped with
    fluentdream so that dreaming, the tests and the figures run offline (`fd.load_model("embedded")`).
    It is a toy: fluent-ish technical English about programming, nothing more.

    ## Architecture
    - `GPTNeoXForCausalLM`: {m['num_layers']} layers, hidden {m['hidden_size']}, {m['num_heads']} heads
      (head dim {m['hidden_size'] // m['num_heads']}), MLP {m['intermediate_size']} (GELU), parallel residual,
      rotary on {m['rotary_pct']:.0%} of each head's dims, max {m['max_position_embeddings']} positions,
      tied input/output embeddings: {m['tie_word_embeddings']}.
    - Parameters: {m['parameters']:,} ({m['non_embedding_parameters']:,} non-embedding).
    - Checkpoint: `model.safetensors` in {m['checkpoint_dtype']}, {m['checkpoint_bytes'] / 1e6:.2f} MB;
      load in float32 with `GPTNeoXForCausalLM.from_pretrained(dir, dtype=torch.float32)`.
    - Forward pass of 256 prompts x 12 tokens (float32, {c['threads']} CPU thread(s)): {m['forward_256x12_ms_fp32']} ms.

    ## Tokenizer
    Byte-level BPE (Hugging Face `tokenizers`, GPT-2/Pythia pre-tokenizer, `add_prefix_space=False`),
    vocabulary {m['vocab_size']}, trained on the training split. One special token, `<|endoftext|>`
    (id 0), is eos, pad, unk (and nominal bos); nothing is added when encoding.

    ## Training
    - Data: `data/corpus/train.parquet` ({m['corpus_documents']['train']:,} paragraphs,
      {m['corpus_tokens']['train']:,} tokens with one `<|endoftext|>` per document); see `data/README.md`.
    - {m['steps']} AdamW steps of at most {c['steps']} (training is capped at {c['train_minutes']} min of wall clock; the
      lr schedule follows whichever runs out first{'; here the cap stopped it' if m['steps'] < c['steps'] else ''}) (peak lr {c['lr']}, betas (0.9, {c['beta2']}), weight decay {c['weight_decay']},
      {c['warmup_steps']} warmup steps then cosine to {c['min_lr_ratio']}x), batch {m['batch_size']} x
      {m['context_length']} tokens packed from documents joined by `<|endoftext|>`, bf16 autocast: {c['bf16']}.
    - Training tokens: {m['train_tokens']:,} ({m['epochs']} epochs).
    - Training time: {m['train_seconds'] / 60:.1f} min of training, {m['total_seconds'] / 60:.1f} min end to end
      (corpus + tokenizer + training + evaluation) on a 2-core AMD EPYC (AVX512-BF16) machine,
      {c['threads']} torch thread(s), torch {m['torch']}, seed {c['seed']}.

    | step | train loss | val CE (subset) | seconds |
    |---|---|---|---|
    {hist}

    ## Evaluation
    - Held-out cross-entropy: **{m['val_ce_nats_per_token']:.4f} nats/token** on the validation split
      ({m['corpus_tokens']['validation']:,} tokens): {m['val_ce_definition']}.
    - Self cross-entropy of 12-token prompts (the fluency term of EPO): over {m['window_ce_definition']}:
      mean **{m['window_ce_mean']:.3f}**, SD **{m['window_ce_sd']:.3f}**; "in-distribution" threshold
      mean + 2 SD = **{m['window_ce_threshold_mean_plus_2sd']:.3f}** nats/token.
    - Sample (top-k 40, seed {c['seed']}): {json.dumps(m['sample'])}

    ## Rebuild
    `{m['command']}` (all numbers above are written by that script to `training_metrics.json`).
    Results depend on the installed package versions the corpus is read from: {', '.join(m['source_versions'].values())}.

    ## Data and license
    Python standard library docstrings and `pydoc_data.topics` (PSF-2.0), plus docstrings of numpy,
    pandas, networkx, sympy, torch (BSD-3-Clause), matplotlib (Matplotlib license, PSF-based) and
    transformers (Apache-2.0). Details and attributions: `data/README.md`. The model weights are
    released with fluentdream (MIT).
    """)


def corpus_readme(cfg: Config, m: dict) -> str:
    by_src = m["corpus_train_tokens_by_source"]
    rows = "\n    ".join(f"| `{s}` | {SOURCES[s][2]} | {m['source_versions'][s]} | {SOURCES[s][1]} | "
                     f"{by_src.get(s, '')} |" for s in cfg.sources.split(","))
    return textwrap.dedent(f"""\
    # Corpus for the embedded model

    `data/corpus/{{train,validation}}.parquet` — columns `text` (one cleaned paragraph per row) and
    `source`. Load with

        datasets.load_dataset("parquet", data_files={{"train": "data/corpus/train.parquet",
                                                      "validation": "data/corpus/validation.parquet"}})

    Built by `python experiments/00_build_embedded_model.py` from text that was already installed on
    the build machine; nothing was downloaded.

    ## Sources and licenses

    | source | what | version read | license | train tokens |
    |---|---|---|---|---|
    {rows}

    Only docstrings (module, class, function) are used; tests, vendored and third-party
    directories are skipped. Licenses were checked in each package's `*.dist-info` metadata.
    All are permissive; redistribution keeps the notices:
    - Python: Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved (PSF License Agreement v2).
    - numpy: Copyright (c) 2005-2025, NumPy Developers (BSD-3-Clause).
    - pandas: Copyright (c) 2008-2011, AQR Capital Management, LLC, Lambda Foundry, Inc. and PyData
      Development Team; 2011-2026, Open source contributors (BSD-3-Clause).
    - matplotlib: Copyright (c) 2012- Matplotlib Development Team; All Rights Reserved (Matplotlib License).
    - networkx: Copyright (c) 2004-2025, NetworkX Developers (BSD-3-Clause).
    - sympy: Copyright (c) 2006-2023 SymPy Development Team (BSD-3-Clause).
    - torch: Copyright (c) 2016- Facebook, Inc (Adam Paszke) and the other copyright holders listed in torch's LICENSE (BSD-3-Clause).
    - transformers: Copyright 2018- The Hugging Face team (Apache License 2.0).

    ## Cleaning
    1. Docstrings are read with `ast` (nothing is imported except `pydoc_data.topics`).
    2. Removed: fenced code blocks, reST literal blocks (after `::`), code-like directives
       (`.. code-block::`, `.. math::`, ...), reST comments, whole paragraphs containing a `>>>`
       doctest, section underlines, and lines that look like code (shell/doctest prompts, Python
       statements, or fewer than 72% letters and spaces).
    3. reST/Markdown markup is flattened (``:func:`~a.b` `` -> `b`, ``` ``x`` ``` -> `x`, `**b**` -> `b`,
       links -> their text); whitespace is normalized; each paragraph becomes one document.
    4. Kept only paragraphs of >= {cfg.min_doc_chars} characters and >= 6 words, with at least one common
       English function word, >= 60% alphabetic words and >= 80% letters/spaces.
    5. Exact de-duplication across all sources (first occurrence wins, sources in the order above).
    6. Split by document: sha1(text) mod 1000 < {cfg.val_per_mille} -> validation ({cfg.val_per_mille / 10:g}%).

    ## Size
    | split | documents | tokens (vocab-{m['vocab_size']} BPE, one `<|endoftext|>` per document) |
    |---|---|---|
    | train | {m['corpus_documents']['train']:,} | {m['corpus_tokens']['train']:,} |
    | validation | {m['corpus_documents']['validation']:,} | {m['corpus_tokens']['validation']:,} |
    """)


if __name__ == "__main__":
    main()
