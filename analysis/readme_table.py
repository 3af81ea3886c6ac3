"""The README results table, generated from results/<preset>/numbers.json only, so the two cannot drift.

    python -m analysis.readme_table --preset embedded             # -> results/embedded/readme_table.md
    python -m analysis.readme_table --preset smollm2 --splice README.md

--splice replaces the lines between `<!-- results-table:begin -->` and `<!-- results-table:end -->`
of FILE with one column group (ours, runs, holds?) per model of MODELS: from its numbers.json when
here, else kept from FILE with its source line (a clone that ran only the embedded preset keeps
the SmolLM2 numbers). A row is a paper claim (§, numbers from PAPER.md), ours with 95% intervals
and tests, the runs behind them, and a verdict per model by the rule in the row's `holds`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from fluentdream.files import atomic_write

from . import readme_compact as compact
from .readme_beyond import BEYOND_PAPER
from .readme_numbers import Numbers, Row, tested as _tested
from .readme_splice import BEGIN, END, SOURCE, kept_columns, splice



PAPER_LENGTHS = (2, 4, 8, 12, 16, 24, 32)   # the slice lengths of the paper's Fig 5a


def _fluency_keys(n: Numbers) -> list[str]:
    """fluency.ce.nN keys in order of N, only the paper's lengths when all of them were measured."""
    keys = sorted(n.keys("fluency.ce.n"), key=lambda k: int(k.rsplit("n", 1)[1]))
    paper = [k for k in keys if int(k.rsplit("n", 1)[1]) in PAPER_LENGTHS]
    return paper if len(paper) == len(PAPER_LENGTHS) else keys


def _fluency(n: Numbers) -> str:
    keys = _fluency_keys(n)
    sizes = ", ".join(k.rsplit(".n", 1)[1] for k in keys)
    text = f"n = {sizes}: " + ", ".join(n.ci(k) for k in keys) + f"; SD at 12: {n.v('fluency.sd.n12')}"
    if n.has("fluency.limit.perplexity_100", "fluency.limit.ce_5", "fluency.limit.in_distribution"):
        text += (f"; limits by z-score: perplexity 100 → CE {n.v('fluency.limit.perplexity_100')}, "
                 f"CE 5 → {n.v('fluency.limit.ce_5')}, in distribution: CE < "
                 f"{n.v('fluency.limit.in_distribution')}")
    return text


def _fluency_holds(n: Numbers) -> str:
    """yes when mean CE falls from each of the paper's lengths to the next, partly otherwise."""
    keys = _fluency_keys(n)
    vals = [n.value(k) for k in keys]
    return "yes" if all(a > b for a, b in zip(vals, vals[1:])) else "partly: not monotone"


def _logits(n: Numbers) -> str:
    words = sorted({k.split(".")[1] for k in n.keys("logits.")})
    return "; ".join(f'"{w}" {n.at(f"logits.{w}.lowest_ce")} … {n.at(f"logits.{w}.highest")}'
                     for w in words)


def _logits_holds(n: Numbers) -> str:
    """yes when every word's highest point costs CE: higher activation than its lowest-CE point."""
    words = {k.split(".")[1] for k in n.keys("logits.")}
    ok = all(n.value(f"logits.{w}.highest") > n.value(f"logits.{w}.lowest_ce") for w in words)
    return "yes" if ok else "no: a single-point frontier"


def _six(n: Numbers) -> str:
    keys = [k for k in n.keys("six_neurons.L") if not k.endswith(".max")]
    return ", ".join(f"{k.split('.', 1)[1]} {n.v(k)} (max {n.v(k + '.max')})" for k in keys)


def _six_holds(n: Numbers) -> str:
    """yes / partly / no as all, some or none of the neurons exceed OFF under the CE limit."""
    k, of = n.value("six_neurons.fired"), n.n["six_neurons.fired"]["n"]
    return ("yes" if k == of else "partly" if k else "no") + f": {k} of {of} above {n.doc['off_below']}"


def _seeds(n: Numbers) -> str:
    s = n.n["seeds.max.median"]
    text = (f"{s['n']} seeds: max {n.v('seeds.max.min')}–{n.v('seeds.max.max')} "
            f"(median {n.ci('seeds.max.median')})")
    if n.has("seeds.max_ce5.median"):
        text += (f"; max under the CE-5 analog {n.v('seeds.max_ce5.min')}–{n.v('seeds.max_ce5.max')}"
                 f" (median {n.ci('seeds.max_ce5.median')}; {n.v('seeds.max_ce5.missing')} seeds"
                 " with no candidate under it)")
    return text + f"; {n.v('seeds.off')} seeds never above {n.doc['off_below']}"


def _seeds_holds(n: Numbers) -> str:
    """yes when seeds' maxima differ by more than half the best seed's maximum."""
    lo, hi = n.value("seeds.max.min"), n.value("seeds.max.max")
    return "yes" if hi - lo > 0.5 * abs(hi) else "no: seeds agree"


def _growth_keys(n: Numbers, kind: str) -> list[str]:
    return sorted(n.keys(f"growth.{kind}.it"), key=lambda k: int(k.rsplit("it", 1)[1]))


def _growth(n: Numbers) -> str:
    its = [k.rsplit("it", 1)[1] for k in _growth_keys(n, "max")]
    ce = _growth_keys(n, "min_ce")
    return (f"growth run after {'/'.join(its)} iterations: "
            + ", ".join(n.v(k) for k in _growth_keys(n, "max"))
            + f"; lowest frontier CE {n.v(ce[0])} → {n.v(ce[-1])}")


def _growth_holds(n: Numbers) -> str:
    """yes when the frontier maximum never falls and its lowest CE ends below where it began."""
    m = [n.value(k) for k in _growth_keys(n, "max")]
    ce = [n.value(k) for k in _growth_keys(n, "min_ce")]
    return "yes" if all(a <= b for a, b in zip(m, m[1:])) and ce[-1] < ce[0] else "partly"


def _restarts(n: Numbers) -> str:
    every = n.n["restarts.everywhere"]
    return (f"population 10 iterations after a restart vs before it: first restart better at "
            f"every penalty in {n.v('restarts.everywhere')} of {every['n']} runs (share "
            f"{n.ci('restarts.everywhere.share')}, Clopper-Pearson); per run, share of penalties "
            f"improved {n.ci('restarts.share_improved.median')}, gain "
            f"{n.ci('restarts.mean_gain.median')} ({n.p('restarts.mean_gain.median')})")


def _restarts_holds(n: Numbers) -> str:
    """yes when most restarts improve at every penalty; partly when most penalties improve."""
    if n.value("restarts.everywhere.share") > 0.5:
        return "yes"
    return "partly: better at most points" if n.value("restarts.share_improved.median") > 0.5 else "no"


def _neuron(role: str) -> Callable[[Numbers], str]:
    def ours(n: Numbers) -> str:
        neuron = n.n[f"{role}.dataset.best"]["label"].split(":")[0]
        per_run = n.n.get(f"{role}.best_dream.median", {}).get("values") or []
        return (f"{neuron}: best dataset example {n.at(f'{role}.dataset.best')}; best "
                f"in-distribution dream {n.at(f'{role}.best_dream_in_dist')}; at the example's CE "
                f"the dream is {n.v(f'{role}.dream_at_dataset_ce')} "
                f"(**{n.v(f'{role}.dream_minus_dataset')}**; per run minus the example: "
                f"{n.p(f'{role}.dream_minus_dataset')}); best dream per run "
                + " / ".join("none" if x is None else f"{x:.2f}" for x in per_run))
    return ours


def _neuron_holds(role: str) -> Callable[[Numbers], str]:
    def holds(n: Numbers) -> str:
        """yes / no by the sign of the pooled difference at matched CE; the per-run test's
        verdict is added when it is not significant."""
        d = n.value(f"{role}.dream_minus_dataset")
        if d is None:
            return "no: no dream reaches the example's CE"
        word = "yes" if d > 0 else "**no** at matched CE"
        return word if n.significant(f"{role}.dream_minus_dataset", 1 if d > 0 else -1) \
            else f"{word} (per-run test not significant)"
    return holds


def _sampled(n: Numbers) -> str:
    wins = n.n["sampled.wins"]
    return (f"{wins['n']} sampled neurons, in distribution: dream {n.ci('sampled.dream.median')} vs "
            f"dataset {n.ci('sampled.dataset.median')} (medians); dream − dataset "
            f"{n.ci('sampled.dream_minus_dataset')} ({n.p('sampled.dream_minus_dataset')}); "
            f"the dream wins on {n.v('sampled.wins')} of {wins['n']} (share "
            f"{n.ci('sampled.wins.share')}, Clopper-Pearson)")


def _attribution(n: Numbers) -> str:
    e = n.n["attribution.top_tokens"]
    tokens = ", ".join(f'"{t}"' for t in dict.fromkeys(e["tokens"]))
    return (f"{e['n']} attributed prompts; the token carrying most of each: {tokens}; "
            f"the last token in {e['last_position']} of {e['n']}")


def _attribution_holds(n: Numbers) -> str:
    """yes when a second family (top-attributed token) carries >= 2 of the prompts; no when one
    carries them all; else undecided: one prompt's family turns with the trajectory (LOG.md)."""
    counts = sorted(Counter(n.n["attribution.top_tokens"]["tokens"]).values())
    return ("no: one family" if len(counts) == 1 else "yes" if counts[-2] >= 2
            else "undecided: a second family in one prompt")


def _residual(n: Numbers) -> str:
    return (f"dream {n.ci('residual.dream.mean')} / dataset {n.ci('residual.dataset.mean')} / "
            f"random {n.ci('residual.random.mean')} ({n.n['residual.random.mean']['n']} directions); "
            f"dream − dataset {n.p('residual.dream_minus_dataset')}; dataset − random "
            f"{n.p('residual.dataset_minus_random')}")


def _residual_holds(n: Numbers) -> str:
    """yes when both paired tests find the stated order (p < 0.05); otherwise says which step
    fails: the reverse order significant, or no significant difference."""
    fails = []
    for key, a, b in (("residual.dream_minus_dataset", "dream", "dataset"),
                      ("residual.dataset_minus_random", "dataset", "random")):
        if not n.significant(key, 1):
            fails.append(f"{b} > {a}" if n.significant(key, -1) else f"{a} ≈ {b}")
    if not fails:
        return "yes"
    return ("partly: " if len(fails) == 1 else "no: ") + ", ".join(fails)


def _limited(n: Numbers) -> str:
    return (f"dream {n.ci('residual.dream_limited.mean')} vs dataset {n.ci('residual.dataset.mean')}"
            f" ({n.p('residual.dream_limited_minus_dataset')})")


def _slack(n: Numbers) -> str:
    ces = sorted(n.keys("residual.slack", ".xentropy.mean"))
    zs = sorted(n.keys("residual.slack", ".z.mean"))
    return ("dream CE " + ", ".join(f"{n.ci(k)} at {k.split('.')[1][5:]} σ" for k in ces)
            + f" (corpus {n.v('fluency.ce.n12')}); alignment {n.v(zs[0])} → {n.v(zs[-1])}")


def _slack_holds(n: Numbers) -> str:
    """yes when the most slack brings the dream CE within one SD of the corpus's 12-token mean."""
    last = sorted(n.keys("residual.slack", ".xentropy.mean"))[-1]
    if not n.has("fluency.ce.n12", "fluency.sd.n12"):
        return "—"
    near = n.value(last) <= n.value("fluency.ce.n12") + n.value("fluency.sd.n12")
    return "yes" if near else "no: dreams stay less fluent"


def _layer_keys(n: Numbers) -> list[str]:
    return sorted(n.keys("residual.layer"), key=lambda k: int(k.split(".")[1][5:]))


def _layers(n: Numbers) -> str:
    keys = _layer_keys(n)
    return (", ".join(f"L{k.split('.')[1][5:]} {n.ci(k)}" for k in keys)
            + f"; last vs first layer {n.p('residual.last_minus_first_layer')}")


def _layers_holds(n: Numbers) -> str:
    """yes when an inner layer's 95% interval lies below both end layers'; no when an end layer's
    lies below every inner one's; else undecided: overlapping means turn with the trajectory."""
    keys = _layer_keys(n)
    ci = {k: n.n[k].get("ci") or [n.value(k)] * 2 for k in keys}      # [low, high] per layer
    ends, inner = (keys[0], keys[-1]), keys[1:-1]
    if inner and min(ci[k][1] for k in inner) < min(ci[e][0] for e in ends):
        return "yes"
    return ("no: lowest at an end layer" if any(all(ci[e][1] < ci[k][0] for k in inner) for e in ends)
            else "undecided: the layers' intervals overlap")


ROWS = (
    Row("fluency", "CE of n-token corpus slices falls with n (§3, Fig 5a)", "01_fluency_calibration",
        "n = 2, 4, 8, 12, 16, 24, 32: 5.89, 4.95, 4.16, 3.75, 3.50, 3.17, 2.97; SD at 12: 1.1",
        "`fig5a_fluency_calibration.png`", _fluency, _fluency_holds),
    Row("logits", "Logit vs fluency trade off monotonically (§3.1, Table 2)", "02_token_logits",
        '" dog" −1.58@72 … 4.62@18840; " AI" −6.66@46 … 4.54@10989',
        "`table2_token_logits.md`, `frontier_logit_*.png`", _logits, _logits_holds),
    Row("six_neurons", "Six-neuron ladder: best activation at perplexity < 100 (§3.2, Table 3, Fig 1)",
        "03_six_neurons", "2.59, 0.22, 4.95, 3.03, 2.60, 3.02",
        "`table3_six_neurons.md`, `table5_frontier_points.md`, `fig1_attribution.png/.html`",
        _six, _six_holds),
    Row("seed_variance", "Large spread across seeds (§3.2, Fig 2a)", "04_seed_variance",
        "60 seeds: max 2.4–10.2; max with CE < 5: 0–8.6", "`fig2_seed_variance.png`",
        _seeds, _seeds_holds),
    Row("growth", "Frontier grows, late progress at low CE (§3.2, Fig 2b)", "04_seed_variance",
        "max after 20/40/100/300 iterations ≈ 6.8, 8.0, 10.1, 10.5", "`fig2_seed_variance.png`",
        _growth, _growth_holds),
    Row("restarts", '"10 iterations after a restart, better at all points" (§3.2)', "04_seed_variance",
        '"typically"', "—", _restarts, _restarts_holds),
    Row("example_neuron", "Dreams beat the top-64 dataset examples at matched CE on the "
        '"example" neuron (§3.3, Fig 3, Table 4)', "05_dream_vs_dataset",
        "+1–1.5 at CE ≈ 4; best dream 10.16 @ CE 8.16; dataset ≈ 7.0",
        "`fig3_dream_vs_dataset.png`, `table4_example_neuron.md`",
        _neuron("example"), _neuron_holds("example")),
    Row("sampled_neurons", "Beyond the paper's one neuron: dreams vs the best dataset window in "
        "distribution, on sampled neurons (§3.3)", "05_dream_vs_dataset",
        "— (one neuron: +1–1.5 at CE ≈ 4)", "`tables/dataset_sampled.csv`", _sampled,
        _tested("sampled.dream_minus_dataset", 1, "the dataset is higher")),
    Row("polysemantic_neuron", "Polysemantic neuron: dreams beat the best dataset example (§3.4, Fig 4)",
        "06_polysemantic_neuron", "L3.N1000: dataset 4.6 @ 4.3; dream 6.33 @ 4.96",
        "`fig4_polysemantic.png/.html`", _neuron("polysemantic"), _neuron_holds("polysemantic")),
    Row("attribution", "Attribution shows several trigger families (§3.4, Fig 4)",
        "06_polysemantic_neuron", "several families", "`fig4_polysemantic.html`",
        _attribution, _attribution_holds),
    Row("residual", "Residual alignment, no CE limit: dream > dataset > random (§3.5, Fig 5c)",
        "07_residual_directions", "≈ 7.26 / 6.48 / 3.36", "`fig5_residual_alignment.png`",
        _residual, _residual_holds),
    Row("residual_limited", "Dreams limited to in-distribution CE: dataset slightly higher (§3.5, Fig 5d)",
        "07_residual_directions", "≈ 6.0 vs 6.48", "`fig5_residual_alignment.png`",
        _limited, _tested("residual.dream_limited_minus_dataset", -1, "dreams stay higher")),
    Row("slack", "About 3 σ of slack makes dream CE look like the corpus (§3.5, Fig 5b)",
        "07_residual_directions", "CE ≈ 4.3", "`fig5_residual_alignment.png`", _slack, _slack_holds),
    Row("layers", "Alignment lowest mid-network (§3.5, Fig 6)", "07_residual_directions",
        "7.60, 7.39, 6.92, 6.75, 6.77, 7.47, 7.91", "`fig6_residual_layers.png`",
        _layers, _layers_holds),
    *BEYOND_PAPER,
    Row("companion", "Phi-2 L8.N1 walkthrough (companion page)", "08_companion_phi2", "—", "—",
        lambda n: "not run here", lambda n: "—"),
)

MODELS = ("embedded", "smollm2")   # the README's model columns (`make figures PRESET=...`)
LEGEND = ("x [a, b] is a value with its 95% bootstrap interval over the units named in numbers.json "
          "({resamples} resamples, seed {seed}; 01's slice means: a t interval, the slices are not "
          "saved); Wilcoxon = signed-rank test on paired units, Mann-Whitney = U test on unpaired "
          "ones, both two-sided, with the rank-biserial r and the number of units n. *runs* counts "
          "the run directories behind a cell; numbers.json lists them with their W&B run ids. "
          "*holds?* is judged per model. Figures: `paper_figures/out/` (embedded) and "
          "`paper_figures/out/<preset>/` (others). Numbers are from:")


def command(row: Row, presets: list[str]) -> str:
    """The script, with the --preset flag of every model column but the embedded one."""
    flags = [f"`--preset {p}`" for p in presets if p != "embedded"]
    return (f"{row.experiment[:2]} · `python experiments/{row.experiment}.py`"
            + (f" ({', '.join(flags)})" if flags else ""))


def cells(row: Row, n: Numbers) -> list[str]:
    """One model's (ours, runs, holds?) cells of a row."""
    keys = n.of_claim(row.claim)
    ours, holds = (row.ours(n), row.holds(n) + n.budget(keys)) if keys else ("not run", "—")
    return [ours, str(n.runs(keys)), holds]


def source(doc: dict) -> str:
    return SOURCE.format(preset=doc["preset"], sha=(doc.get("git_sha") or "unknown")[:10],
                         dirty=", dirty tree" if doc.get("git_dirty") else "")


def render(*columns: dict) -> str:
    """The markdown table (with its legend): three cells (ours, runs, holds?) per column, in
    order; a column is a numbers.json document, or a model's cells kept from the README being
    spliced (`kept_columns`) when its numbers.json is not here."""
    presets = [c["preset"] for c in columns]
    models = [c if "rows" in c else Numbers(c) for c in columns]
    lines = ["| paper claim | experiment · command | paper | "
             + " | ".join(f"ours ({p}) | runs | holds?" for p in presets) + " | figure / table |",
             "|---|---|---|" + "---|---:|---|" * len(presets) + "---|"]
    for row in ROWS:
        row_cells = [row.text, command(row, presets), row.paper]
        for m in models:
            row_cells += (m["rows"].get(row.text, ["not run", "0", "—"]) if isinstance(m, dict)
                          else cells(row, m))
        row_cells.append(row.figure)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells) + " |")
    boot = next(c["bootstrap"] for c in columns if "bootstrap" in c)
    legend = LEGEND.format(resamples=f"{boot['resamples']:,}", seed=boot["seed"])
    sources = [c["source"] if "rows" in c else source(c) for c in columns]
    return "\n".join(lines) + "\n\n" + legend + "\n" + "\n".join(sources) + "\n"


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="results root")
    p.add_argument("--preset", default="embedded", help="embedded | smollm2 | paper | smoke")
    p.add_argument("--splice", type=Path, metavar="FILE", help="also replace the table in FILE "
                   "(RESULTS.md)")
    p.add_argument("--compact", type=Path, metavar="FILE", help="also replace the compact table "
                   "in FILE (README.md; analysis/readme_compact.py)")
    args = p.parse_args(argv)
    src = args.results / args.preset / "numbers.json"
    if not src.exists():
        raise ValueError(f"{src} is missing: run `make tables PRESET={args.preset}` first")
    for given in (args.splice, args.compact):
        if given and not given.exists():
            raise ValueError(f"{given} does not exist; give the file to splice the table into")
    own = render(json.loads(src.read_text()))
    out = args.results / args.preset / "readme_table.md"
    atomic_write(out, lambda fh: fh.write(own.encode()))
    if args.splice:
        readme = args.splice.read_text()
        new = splice(readme, readme_columns(args.results, readme))
        atomic_write(args.splice, lambda fh: fh.write(new.encode()))
    if args.compact:
        text = args.compact.read_text()
        new = compact.splice(text, compact.render(ROWS, compact.columns(args.results, text,
                                                                         MODELS)))
        atomic_write(args.compact, lambda fh: fh.write(new.encode()))
    print(f"results table: {out}" + (f", spliced into {args.splice}" if args.splice else "")
          + (f", compact in {args.compact}" if args.compact else ""))
    return out


def readme_columns(results: Path, readme: str) -> str:
    """The README's table: a column per model of MODELS, from its numbers.json when it is here,
    else kept from the README (a clone that ran only `make figures` keeps the SmolLM2 column)."""
    columns = []
    for preset in MODELS:
        path = results / preset / "numbers.json"
        if path.exists():
            columns.append(json.loads(path.read_text()))
        elif (kept := kept_columns(readme, preset)) is not None:
            columns.append(kept)
    if not any("bootstrap" in c for c in columns):
        raise ValueError("no numbers.json of " + " or ".join(MODELS) + " is here to splice")
    return render(*columns)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback, exit 2
        print(f"readme_table: error: {e}", file=sys.stderr)
        sys.exit(2)
