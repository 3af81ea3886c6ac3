"""09 — Insertion, deletion, two-token swaps and restarts that explore, at equal wall time
(beyond the paper: its §4 limitations; issue 14).

    python experiments/09_operators_and_restarts.py                    # embedded preset
    python experiments/09_operators_and_restarts.py --shard 0/2        # seeds 0, 2, 4, ... only
    python experiments/09_operators_and_restarts.py --preset paper     # Pythia-12B

The paper's §4 names two limitations: single-token swaps trap EPO in local minima (a word split
in two tokens cannot form one swap at a time; it proposes insertion, deletion and multi-token
swaps), and results vary a lot across seeds (it proposes "more exploration"). Four conditions
on the same neurons and seeds:
  swap               the paper's EPO: one-token gradient swaps, restarts collapse every slot onto
                     one prompt. The reference: it runs epo.iters iterations.
  operators          the full operator set (cfg.operators: swap 0.5, two-token swap 0.1, insert
                     0.2, delete 0.2; lengths 8..16 around n = 12, see PRESETS for why).
  explore            swap only, restarts that keep diversity (cfg.restart_mode: slot i restarts
                     from the winner at the i-th of M stratified restart penalties, fluentdream.core.steps.restart).
  operators+explore  both.
Equal wall time: variable lengths change an iteration's cost, so every run of a condition gets
the time the reference's runs of that neuron took (their mean recorded seconds, the budget) and
stops when its own recorded seconds reach it (runs.dream_many's stop), with at most
`cap` x epo.iters iterations. Per neuron, the four conditions run one after the other with their
seeds batched, so a change in the machine's load falls on all of them alike.

Neurons (stated rule): 03's ladder, neuron i of layer round(i * (n_layers - 1) / 5), for
i = 1, 3, 5: on the embedded model L1.N1, L2.N3, L3.N5, one per layer past the embedding-near
L0; on Pythia-12B L7.N1, L17.N3, L27.N5. Restarts every epo.iters / 10 iterations (Table 1's 30
of 300: ten restarts a run). analysis/operators.py compares frontier hypervolume (reference
point stated in study.json: CE = 01's in-distribution limit, activation 0), its spread across
seeds, and the best activation in distribution.

Writes <results>/<preset>/09_operators_and_restarts/: study.json, and <condition>/<run> run
directories (their histories record every iteration's seconds).
"""
import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import fluentdream as fd
from fluentdream import runs
from fluentdream.runs import CHECKPOINT, read_json, write_json

NAME = "09_operators_and_restarts"
CALIBRATION = "01_fluency_calibration"
REFERENCE = "swap"


@dataclass(frozen=True)
class Config:
    model: str
    """Model dreamed on ("embedded", a local HF dir, or a hub name)."""
    neurons: tuple[str, ...] | None = None
    """Targets; None = 03's ladder at i = 1, 3, 5 (the docstring's rule)."""
    seeds: int = 16
    """Runs per neuron and condition, seeds 0..seeds-1 (issue 14: at least 16)."""
    operators: dict = field(default_factory=lambda: {"swap": 0.5, "swap2": 0.1, "insert": 0.2,
                                                     "delete": 0.2})
    """The full operator set of the operator conditions (EPOConfig.operators)."""
    min_len: int = 8
    """Shortest prompt in the operator conditions (EPOConfig.min_len)."""
    max_len: int = 16
    """Longest prompt in the operator conditions (EPOConfig.max_len)."""
    restart_mode: str = "frontier"
    """The exploring restart of the explore conditions (EPOConfig.restart_mode)."""
    conditions: tuple[str, ...] = ("swap", "operators", "explore", "operators+explore")
    """Conditions run, in this order per neuron; the first must be the reference, swap."""
    cap: float = 3.0
    """A budgeted run stops at cap * epo.iters iterations if its budget lasts that long."""
    epo: fd.EPOConfig = fd.EPOConfig()
    """EPO settings of the reference (Table 1 but iterations; restarts every iters / 10)."""
    wandb: str = "disabled"
    """W&B mode for every run (auto, online, offline, disabled)."""

    def changes(self, condition: str) -> dict:
        """EPOConfig fields a condition sets on top of epo."""
        parts = {"operators": dict(operators=self.operators, min_len=self.min_len,
                                   max_len=self.max_len),
                 "explore": dict(restart_mode=self.restart_mode)}
        out: dict = {}
        for part in condition.split("+"):
            if part not in parts and part != REFERENCE:
                raise ValueError(f"unknown condition {condition!r}; conditions combine "
                                 f"{REFERENCE}, {', '.join(parts)} with '+'")
            out.update(parts.get(part, {}))
        return out


FAST = fd.fast_dtype("cpu")   # bf16 where it measures faster on this CPU, else fp32
PRESETS = {
    # 3 neurons x 16 seeds x 4 conditions = 192 runs of 100 iterations' time each: about 17
    # minutes as two 1-thread shards on 2 cores (`make operators`; LOG.md has the timing).
    # Lengths 8..16 sit symmetric around n = 12 and insert = delete, so the mean length (and
    # with it an iteration's cost) does not drift; half the children stay gradient swaps, the
    # search the paper tuned; two-token swaps are rarer, as most of them break fluency.
    "embedded": Config(model="embedded",
                       epo=fd.EPOConfig(iters=100, restart_frequency=10, device="cpu", dtype=FAST)),
    "paper": Config(model="EleutherAI/pythia-12b-deduped",
                    epo=fd.EPOConfig(iters=300, device="cuda", dtype="float16"), wandb="auto"),
    "smoke": Config(model="embedded", seeds=2, min_len=6, max_len=10,
                    epo=fd.EPOConfig(iters=4, population_size=4, explore_per_pop=4, topk=16,
                                     restart_frequency=2, seq_len=8, device="cpu",
                                     dtype="float32")),
}


def ladder(n_layers: int) -> list[str]:
    """03's rule, neuron i of layer round(i * (n_layers - 1) / 5), at i = 1, 3, 5."""
    return [f"L{round(i * (n_layers - 1) / 5)}.N{i}" for i in (1, 3, 5)]


def spent(run_dir: Path) -> float:
    """Seconds a finished run recorded (its share of each batched iteration's wall time)."""
    return float(np.sum(fd.History.load(run_dir / CHECKPOINT).seconds))


def budget_stop(budget: float):
    """runs.dream_many's stop: end a run once its recorded seconds reach `budget`."""
    def stop(_run_dir: Path, report) -> bool:
        return float(np.sum(report.history.seconds)) >= budget
    return stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--seeds", type=int, help="override the preset's seeds per condition")
    parser.add_argument("--iters", type=int, help="override the reference's iterations")
    parser.add_argument("--conditions", help="comma-separated subset of the preset's conditions "
                        "(swap first), e.g. swap,explore")
    parser.add_argument("--shard", default="0/1", help="k/K: run seeds k, k + K, ... only "
                        "(two 1-thread shards beat one 2-thread process on 2 cores)")
    parser.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"))
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    iters = args.iters or cfg.epo.iters
    conditions = tuple(args.conditions.split(",")) if args.conditions else cfg.conditions
    cfg = replace(cfg, model=args.model or cfg.model, seeds=args.seeds or cfg.seeds,
                  wandb=args.wandb or cfg.wandb, conditions=conditions,
                  epo=cfg.epo.replace(iters=iters, restart_frequency=max(1, iters // 10)))
    if cfg.conditions[0] != REFERENCE:
        raise ValueError(f"the first condition must be {REFERENCE!r}: it sets the time budget")
    changes = {c: cfg.changes(c) for c in cfg.conditions}
    seeds = runs.shard_seeds(cfg.seeds, args.shard)
    preset_dir = args.results / args.preset
    out = preset_dir / NAME
    limits_path = preset_dir / CALIBRATION / "thresholds.json"
    if not limits_path.exists():
        raise ValueError(f"{limits_path} is missing; run experiments/{CALIBRATION}.py --preset "
                         f"{args.preset} first (its in-distribution limit is the reference CE)")
    limit = read_json(limits_path)["in_distribution"]

    # targets and the study's rules, stated once for the analysis
    lm = fd.load_model(cfg.model, device=cfg.epo.device, dtype=cfg.epo.dtype)
    neurons = list(cfg.neurons or ladder(lm.n_layers))
    write_json(out / "study.json", dict(
        neurons=neurons, seeds=cfg.seeds, conditions=list(changes), changes=changes,
        reference=REFERENCE,
        iters=cfg.epo.iters, cap=int(cfg.cap * cfg.epo.iters),
        restart_frequency=cfg.epo.restart_frequency, in_distribution=limit,
        hypervolume_ref=dict(xentropy=limit, activation=0.0),
        budget_rule="each run of a neuron stops once its recorded seconds reach the mean "
                    "recorded seconds of that neuron's reference runs"))
    print(f"{NAME}: {neurons} x {len(seeds)} seeds x {list(changes)}")

    # run: per neuron the reference first (its seconds set the budget), then the others
    for neuron in neurons:
        target = fd.parse_target(neuron, lm)
        budget = None
        for condition, extra in changes.items():
            epo = cfg.epo.replace(**extra)
            if budget is not None:
                epo = epo.replace(iters=int(cfg.cap * cfg.epo.iters))
            dirs = runs.dream_many(
                lm, [(target, epo.replace(seed=s)) for s in seeds], out / condition,
                desc=f"{neuron} {condition}", wandb=cfg.wandb, group=f"{args.preset}-{NAME}",
                stop=budget_stop(budget) if budget is not None else None)
            took = [spent(d) for d in dirs]
            budget = budget if budget is not None else float(np.mean(took))
            print(f"{NAME}: {neuron} {condition}: {np.mean(took):.1f} s per run "
                  f"(budget {budget:.1f} s)")
    print(f"{NAME}: runs in {out}")
    return 0


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
