"""02 — Token logits: dream prompts whose next token is a given word (paper §3.1, Table 2).

    python experiments/02_token_logits.py                     # embedded preset
    python experiments/02_token_logits.py --preset paper      # " dog", " AI", " grand" on Pythia-12B

Target: logit of the word minus the largest other logit at the last position; prompts that contain
the word (case-insensitive) are rejected, or EPO would just repeat it (fd.Logit). Two runs per
word (seeds 0 and 1) at the paper's EPO settings (Table 1); Table 2 lists the Pareto frontier of
both runs merged, as "logit difference @ perplexity".

Analog of the paper's words on the embedded model (stated rule): the three most frequent tokens of
the training corpus that are a leading space plus >= 4 lowercase ASCII letters and are not a
Python keyword, a Python builtin name, `self`/`cls`, or an English stopword. The embedded corpus is
Python documentation, so this picks ordinary prose words the model knows well, like the paper's
" dog". The chosen words are written to targets.json.

Writes <results>/<preset>/02_token_logits/: targets.json and one run directory per (word, seed).
"""

import argparse
import builtins
import keyword
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import fluentdream as fd
from fluentdream import runs
from fluentdream.data.corpus import STOPWORDS, DataSource, documents
from fluentdream.runs import read_json, write_json

NAME = "02_token_logits"


@dataclass(frozen=True)
class Config:
    model: str
    """Model dreamed on ("embedded", a local HF dir, or a hub name)."""
    words: tuple[str, ...] | None = None
    """Logit targets, each one token with its leading space; None = the rule in the docstring."""
    n_words: int = 3
    """How many words the rule picks (the paper has three)."""
    count_tokens: int | None = None
    """Tokens of the training corpus counted by the rule (None = all)."""
    seeds: tuple[int, ...] = (0, 1)
    """One run per seed and word (paper §3.1: two runs each)."""
    epo: fd.EPOConfig = fd.EPOConfig()
    """EPO settings (Table 1, iterations as the preset says)."""
    wandb: str = "disabled"
    """W&B mode for every run (auto, online, offline, disabled)."""


FAST = fd.fast_dtype("cpu")   # bf16 where it measures faster on this CPU, else fp32
PRESETS = {
    # Table 1 in full (T = 300). The 6 runs go batched in lockstep (fluentdream.core.batched), in
    # bf16 where it measures faster on this CPU (fd.fast_dtype): about 1 min on 2 cores.
    "embedded": Config(model="embedded", epo=fd.EPOConfig(iters=300, device="cpu", dtype=FAST)),
    "paper": Config(model="EleutherAI/pythia-12b-deduped", words=(" dog", " AI", " grand"),
                    epo=fd.EPOConfig(iters=300, device="cuda", dtype="float16"), wandb="auto"),
    # SmolLM2-135M-Instruct (30 layers, issue 12): the pipeline has 90 minutes on 2 cores, and
    # an EPO iteration at Table 1's settings costs 2.8-2.9 s per run on one thread (LOG.md,
    # 2026-12-07). 04's 8 seeds at the paper's T = 300 on the example neuron (what 05's
    # matched-CE test needs) are 2,400 run-iterations, ~116 CPU-minutes in 4 shards on both cores;
    # every other experiment shares ~630 run-iterations (~30 CPU-minutes): here the paper's two
    # words of Table 2, one seed each at T = 20 (40 run-iterations).
    "smollm2": Config(model="smollm2-135m", words=(" dog", " AI"), seeds=(0,),
                      epo=fd.EPOConfig(iters=20, device="cpu", dtype=FAST)),
    "smoke": Config(model="embedded", n_words=2, count_tokens=5000, seeds=(0,),
                    epo=fd.EPOConfig(iters=3, population_size=4, explore_per_pop=4, topk=16,
                                     restart_frequency=2, device="cpu", dtype="float32")),
}


def common_words(tokenizer, source: DataSource, n: int, tokens: int | None = None) -> list[str]:
    """The rule above: the n most frequent ' word' tokens (>= 4 lowercase letters) that are not
    Python keywords, builtins, self/cls or stopwords; ties broken by token id."""
    banned = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | {"self", "cls"}
    counts = Counter()
    for _, ids in documents(source, tokenizer, tokens):
        counts.update(ids)
    words = []
    for tok, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        text = tokenizer.decode([tok], clean_up_tokenization_spaces=False)
        if re.fullmatch(r" [a-z]{4,}", text) and text[1:] not in banned | STOPWORDS:
            words.append(text)
            if len(words) == n:
                return words
    raise ValueError(f"the corpus has only {len(words)} tokens that fit the word rule, {n} needed")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--iters", type=int, help="override the preset's EPO iterations")
    parser.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"))
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    cfg = replace(cfg, model=args.model or cfg.model, wandb=args.wandb or cfg.wandb,
                  epo=cfg.epo.replace(iters=args.iters or cfg.epo.iters))
    out = args.results / args.preset / NAME

    # targets: the paper's words, or the rule's (saved so re-runs and figures see the same words)
    lm = fd.load_model(cfg.model, device=cfg.epo.device, dtype=cfg.epo.dtype)
    if (out / "targets.json").exists():
        words = read_json(out / "targets.json")["words"]
    else:
        words = list(cfg.words or common_words(lm.tokenizer, DataSource("embedded"),
                                               cfg.n_words, cfg.count_tokens))
        rule = "paper" if cfg.words else "most frequent ' word' tokens of the training corpus"
        write_json(out / "targets.json", dict(words=words, rule=rule))
    print(f"{NAME}: logit targets {words}")

    # run: 2 seeds per word (§3.1), all runs batched in lockstep; complete runs are skipped
    jobs = [(fd.parse_target(f"logit:{w}", lm), cfg.epo.replace(seed=s))
            for w in words for s in cfg.seeds]
    dirs = runs.dream_many(lm, jobs, out, desc=NAME, wandb=cfg.wandb, group=f"{args.preset}-{NAME}")
    print(f"{NAME}: {len(dirs)} runs complete in {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
