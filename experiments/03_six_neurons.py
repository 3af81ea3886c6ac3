"""03 — Six neurons on a ladder across the network (paper §3.2, Tables 3 and 5, Fig 1).

    python experiments/03_six_neurons.py                      # embedded preset
    python experiments/03_six_neurons.py --preset paper       # L2.N0 ... L27.N5 on Pythia-12B

The paper dreams once on each of L2.N0, L7.N1, L12.N2, L17.N3, L22.N4, L27.N5 (layer 2 + 5i,
neuron i, on Pythia-12B's 36 layers); Table 3 gives each neuron's best activation with perplexity
< 100, Table 5 every frontier point, Fig 1 the causal token attribution of frontier prompts.

Analog on the embedded model (stated rule): neuron i of layer round(i * (n_layers - 1) / 5),
i = 0..5, so the ladder spans the first to the last layer as the paper's spans layers 2..27 of 36.
With 4 layers: L0.N0, L1.N1, L1.N2, L2.N3, L2.N4, L3.N5. One run each (seed 0). The perplexity-100
limit becomes its analog from 01 (same z-score under the 12-token slice CE; see 01's docstring).

Fig 1 needs the model, so it is computed here and saved as data: for each neuron, the causal
attribution (fd.attribution, k = 32 substitutes per position) of up to three prompts of its run:
the best under the perplexity-100 analog (Table 3's prompt), the best under the in-distribution
limit, and the highest activation overall (duplicates dropped).

Writes <results>/<preset>/03_six_neurons/: targets.json, one run directory per neuron, and
attribution.json (tokens, activation, CE, per-position drops, per prompt).
"""
import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import fluentdream as fd
from fluentdream import runs
from fluentdream.runs import CHECKPOINT, read_json, write_json

NAME = "03_six_neurons"
CALIBRATION = "01_fluency_calibration"


@dataclass(frozen=True)
class Config:
    model: str
    """Model dreamed on ("embedded", a local HF dir, or a hub name)."""
    neurons: tuple[str, ...] | None = None
    """Targets; None = the ladder rule of the docstring."""
    seed: int = 0
    """One run per neuron (paper §3.2)."""
    epo: fd.EPOConfig = fd.EPOConfig()
    """EPO settings (Table 1, iterations as the preset says)."""
    attribution_k: int = 32
    """Substitutes tried per position for the attribution (paper Fig 1: 32)."""
    wandb: str = "disabled"
    """W&B mode for every run (auto, online, offline, disabled)."""


FAST = fd.fast_dtype("cpu")   # bf16 where it measures faster on this CPU, else fp32
PRESETS = {
    # Table 1 in full (T = 300); the 6 runs go batched, in the fast dtype (02's preset says more).
    "embedded": Config(model="embedded", epo=fd.EPOConfig(iters=300, device="cpu", dtype=FAST)),
    "paper": Config(model="EleutherAI/pythia-12b-deduped",
                    neurons=tuple(f"L{2 + 5 * i}.N{i}" for i in range(6)),
                    epo=fd.EPOConfig(iters=300, device="cuda", dtype="float16"), wandb="auto"),
    # The ladder rule on 30 layers (L0.N0 ... L29.N5), one run each at T = 10: 60 run-iterations
    # beside 04's T = 300 seeds (02's smollm2 preset says why so few).
    "smollm2": Config(model="smollm2-135m", epo=fd.EPOConfig(iters=10, device="cpu", dtype=FAST)),
    "smoke": Config(model="embedded", attribution_k=4,
                    epo=fd.EPOConfig(iters=3, population_size=4, explore_per_pop=4, topk=16,
                                     restart_frequency=2, device="cpu", dtype="float32")),
}


def ladder(n_layers: int) -> list[str]:
    """Neuron i of layer round(i * (n_layers - 1) / 5), i = 0..5 (the rule above)."""
    return [f"L{round(i * (n_layers - 1) / 5)}.N{i}" for i in range(6)]


def prompts_to_attribute(hist: fd.History, limits: dict) -> list[tuple[np.ndarray, float, float]]:
    """(ids, activation, CE) of the run's best candidate under the perplexity-100 analog (Table 3's
    prompt), under the in-distribution limit, and overall; duplicates dropped."""
    ids, f, ce = hist.candidates()
    picks, seen = [], set()
    for limit in (limits["perplexity_100"], limits["in_distribution"], np.inf):
        ok = np.flatnonzero(ce < limit)
        if len(ok):
            i = ok[np.argmax(f[ok])]
            if tuple(ids[i]) not in seen:
                seen.add(tuple(ids[i]))
                picks.append((ids[i], float(f[i]), float(ce[i])))
    return picks


def attribution_record(att, xentropy: float, neuron: str, text: str) -> dict:
    return dict(neuron=neuron, text=text, ids=att.ids.tolist(), tokens=att.tokens,
                value=att.value, xentropy=xentropy, max_drop=att.max_drop.tolist(),
                min_drop=att.min_drop.tolist())


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
    limits_path = args.results / args.preset / CALIBRATION / "thresholds.json"
    if not limits_path.exists():
        raise ValueError(f"{limits_path} is missing; run experiments/{CALIBRATION}.py "
                         f"--preset {args.preset} first (it defines the perplexity-100 analog)")
    limits = read_json(limits_path)

    # load, targets
    lm = fd.load_model(cfg.model, device=cfg.epo.device, dtype=cfg.epo.dtype)
    neurons = list(cfg.neurons or ladder(lm.n_layers))
    write_json(out / "targets.json", dict(neurons=neurons, rule="paper" if cfg.neurons else
                                          "neuron i of layer round(i * (n_layers - 1) / 5)"))
    print(f"{NAME}: neurons {neurons}")

    # run: one dream per neuron (§3.2), batched in lockstep; complete run directories are skipped
    jobs = [(fd.parse_target(n, lm), cfg.epo.replace(seed=cfg.seed)) for n in neurons]
    dirs = runs.dream_many(lm, jobs, out, desc=NAME, wandb=cfg.wandb, group=f"{args.preset}-{NAME}")

    # attribution of frontier prompts (Fig 1): forward passes only, saved as data for the figure
    records = []
    for neuron, run_dir in zip(neurons, dirs):
        target = fd.parse_target(neuron, lm)
        hist = fd.History.load(run_dir / CHECKPOINT)
        context = fd.Context.of_run(lm, run_dir)
        for ids, _, ce in prompts_to_attribute(hist, limits):
            att = fd.attribution.attribute(lm, target, ids, k=cfg.attribution_k, context=context)
            text = lm.tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)
            records.append(attribution_record(att, ce, neuron, text))
    write_json(out / "attribution.json", dict(k=cfg.attribution_k, prompts=records))
    print(f"{NAME}: {len(dirs)} runs and {len(records)} attributions in {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
