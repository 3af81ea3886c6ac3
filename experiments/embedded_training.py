"""The embedded model's tokenizer, model, training and evaluation, and its model card (a helper
of 00_build_embedded_model.py, which says what it builds and why; `cfg` is the script's Config).

    tokenizer = train_tokenizer(texts, cfg)       # byte-level BPE, <|endoftext|> as eos/pad/unk
    model = make_model(cfg, tokenizer)            # GPT-NeoX, parallel residual, rotary
    result = train(model, train_stream, val_blocks, cfg, log)
    text = model_card(metrics)
"""
from __future__ import annotations

import json
import math
import sys
import textwrap
import time

import numpy as np

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], cfg):
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


def make_model(cfg, tokenizer):
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


def window_ce(model, val_ids: list[list[int]], cfg, rng) -> np.ndarray:
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


def lr_at(step: int, progress: float, cfg) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr * min_lr_ratio as progress goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, progress)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, train_stream, val_blocks, cfg, log):
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
