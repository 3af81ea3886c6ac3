"""08 · The companion page's walkthrough: dreaming on Phi-2 L8.N1 (confirmlabs.org/posts/dreamy.html).

    python experiments/08_companion_phi2.py --preset paper    # microsoft/phi-2 (HF hub or cache)
    python experiments/08_companion_phi2.py --preset smoke --model /path/to/tiny-phi

The companion page dreams on neuron 1 of layer 8 of Phi-2 with the reference code's defaults,
notably a restart every 50 iterations (the paper's Table 1 says 30), at 0.26-0.37 s per iteration,
about 100 s per run. The walkthrough: one EPO run, the Pareto frontier as a table, and a causal
token attribution of the best few frontier prompts (HTML). It needs Phi-2, so the `embedded`
preset only says so and exits 0 (the same steps on the embedded model are experiments 05 and 06).
"""

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream import runs
from fluentdream.files import atomic_write


@dataclass(frozen=True)
class Config:
    model: str | None = "microsoft/phi-2"
    """Model name or directory; None = this preset does not run (embedded)."""
    dtype: str | None = "float16"
    """Model dtype (the companion page: fp16 on a GPU)."""
    target: str = "L8.N1"
    """The companion page's neuron."""
    seed: int = 0
    """EPO seed."""
    iters: int = 300
    """EPO iterations T (reference default: 300)."""
    restart_frequency: int = 50
    """T_restart (the companion page used the reference code's default, 50)."""
    population_size: int = 8
    """M (Table 1: 8)."""
    explore_per_pop: int = 32
    """r (Table 1: 32)."""
    topk: int = 512
    """k (Table 1: 512)."""
    n_attributions: int = 4
    """Highest-activation frontier prompts attributed."""
    attribution_k: int = 32
    """Substitutes tried per position (paper: 32)."""


PRESETS = {
    "embedded": Config(model=None),
    "paper": Config(),
    "smollm2": Config(model=None),
    "smoke": Config(model=None, dtype=None, target="L1.N1", iters=3, restart_frequency=2,
                    population_size=4, explore_per_pop=4, topk=16, n_attributions=2,
                    attribution_k=4),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--model", help="override the preset's model (smoke: a tiny Phi directory)")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    if args.model:
        cfg = Config(**{**asdict(cfg), "model": args.model})
    if cfg.model is None:
        print("08_companion_phi2 needs Phi-2 (microsoft/phi-2, ~5.6 GB, a GPU); it does not run "
              f"on the {args.preset} preset. Run it with --preset paper (or --preset smoke --model "
              "DIR, a tiny Phi directory); experiments 05 and 06 do the same steps on this "
              "preset's model.")
        return 0
    out = Path(args.results) / args.preset / "08_companion_phi2"
    torch.manual_seed(cfg.seed)

    lm = fd.load_model(cfg.model, dtype=cfg.dtype)
    if lm.config.model_type != "phi":
        raise ValueError(f"08_companion_phi2 walks through a Phi model; {cfg.model!r} is "
                         f"{lm.config.model_type!r}")
    target = fd.parse_target(cfg.target, lm)
    epo_cfg = fd.EPOConfig(seed=cfg.seed, iters=cfg.iters, restart_frequency=cfg.restart_frequency,
                           population_size=cfg.population_size, explore_per_pop=cfg.explore_per_pop,
                           topk=cfg.topk, dtype=cfg.dtype)
    # dream_many skips a saved run, resumes an unfinished one, and shares the run with any other
    # process dreaming it (it waits for that one instead of computing it twice)
    run_dir, = runs.dream_many(lm, [(target, epo_cfg)], out / "runs", desc="08_companion_phi2")
    _, front, summary = runs.load_run(run_dir)
    print(f"{target.name} on {lm.name}: {summary['seconds_per_iteration']:.3f} s/iteration")
    print(fd.Frontier(np.array([r["target"] for r in front]), np.array([r["xentropy"] for r in front]),
                      np.array([r["ids"] for r in front]), [r["text"] for r in front],
                      np.array([r["lam"] for r in front])).table())

    # Attribution of the highest-activation frontier prompts (companion page; paper Figs 1, 4).
    best = sorted(front, key=lambda r: -r["target"])[:cfg.n_attributions]
    context = fd.Context.of_run(lm, run_dir)
    atts = [fd.attribution.attribute(lm, target, np.array(r["ids"]), k=cfg.attribution_k,
                                     context=context) for r in best]
    page = fd.attribution.to_html(atts, title=f"{target.name} on {lm.name}")
    atomic_write(out / "attribution.html", lambda fh: fh.write(page.encode()))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
