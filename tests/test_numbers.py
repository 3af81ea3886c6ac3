"""numbers.json and the README table generated from it: hand-made tables whose numbers are worked
out here from their definitions, and the real smoke runs end to end (every number traces to runs)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import build_tables, numbers, readme_table, residual, units
from analysis.readme_numbers import Numbers
from fluentdream.core.history import History
from test_experiments_a import smoke_results  # noqa: F401 - the shared session fixtures
from test_experiments_b import b_results  # noqa: F401
from test_stats import brute_wilcoxon_p

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_index(experiment: str, runs: list[str], targets: list[str]) -> pd.DataFrame:
    return pd.DataFrame(dict(experiment=experiment, run=runs, path=[f"{experiment}/{r}" for r in runs],
                             target=targets, seed=range(len(runs)),
                             wandb_run_id=[f"id{i}" for i in range(len(runs))], git_sha="abc",
                             git_dirty=False, growth=False))


@pytest.fixture()
def made():
    """Hand-made tables: 5 seeds of 04, 6 residual directions over 2 layers, 3 runs of 05."""
    seeds = pd.DataFrame(dict(seed=range(5), target="L1.N7", run=[f"s{i}" for i in range(5)],
                              max_activation=[0.0, 1.0, 5.0, 2.0, 4.0],
                              max_under_ce5=[np.nan, 0.5, 3.0, np.nan, 1.0], ce5_limit=5.4))
    resid = pd.DataFrame(dict(target=[f"resid:L{l}:v{i}" for l, i in
                                      [(1, 0), (1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]],
                              layer=[1, 1, 1, 2, 2, 2],
                              random_z=[2.0, 2.1, 1.9, 2.2, 2.0, 1.8],
                              dataset_z=[3.0, 3.5, 2.9, 4.0, 3.3, 3.1],
                              dream_z=[4.1, 4.2, 3.5, 6.0, 5.1, 4.4],
                              dream_limited_z=[3.1, 3.0, 3.6, 4.4, 3.2, 3.0]))
    summary = pd.DataFrame([dict(role="example", neuron="L1.N7", threshold=6.5, runs=3,
                                 dataset_examples=64, best_dataset=4.0, best_dataset_ce=4.1,
                                 best_dream=5.0, best_dream_ce=8.0, best_dream_in_dist=4.5,
                                 best_dream_in_dist_ce=6.0, dream_at_dataset_ce=3.7,
                                 dream_at_dataset_ce_ce=4.0, dream_minus_dataset=-0.3)])
    per_run = pd.DataFrame(dict(role="example", neuron="L1.N7", run=["d0", "d1", "d2"],
                                seed=[0, 1, 2], best_dream=[0.0, 1.1, 5.0],
                                dream_at_dataset_ce=[0.0, 1.0, 3.7], best_dataset=4.0))
    index = pd.concat([run_index("04_seed_variance", list(seeds["run"]), ["L1.N7"] * 5),
                       run_index("07_residual_directions", [f"r{i}" for i in range(6)],
                                 list(resid["target"])),
                       run_index("05_dream_vs_dataset", ["d0", "d1", "d2"], ["L1.N7"] * 3)])
    return dict(seed_variance=seeds, residual_directions=resid, dataset_summary=summary,
                dataset_runs=per_run, runs=index)


def test_seed_numbers_are_the_medians_ranges_and_counts_of_the_seeds(made):
    n = numbers.build(made)
    med = n["seeds.max.median"]
    assert med["value"] == 2.0 and med["n"] == 5 and med["ci"][0] <= 2.0 <= med["ci"][1]
    assert med["values"] == [0.0, 1.0, 5.0, 2.0, 4.0]
    assert (n["seeds.max.min"]["value"], n["seeds.max.max"]["value"]) == (0.0, 5.0)
    assert n["seeds.max_ce5.median"]["value"] == 1.0 and n["seeds.max_ce5.median"]["n"] == 3
    assert n["seeds.max_ce5.missing"]["value"] == 2
    assert n["seeds.off"]["value"] == 1            # only seed 0 stays at or below OFF
    prov = med["provenance"]
    assert prov["run_dirs"] == [f"04_seed_variance/s{i}" for i in range(5)]
    assert prov["wandb_run_ids"] == [f"id{i}" for i in range(5)] and med["runs"] == 5


def test_residual_comparisons_are_paired_over_directions(made):
    n = numbers.build(made)
    d = made["residual_directions"]
    diff = (d["dream_z"] - d["dataset_z"]).to_numpy()
    e = n["residual.dream_minus_dataset"]
    assert e["value"] == pytest.approx(diff.mean())
    assert e["test"]["name"] == "Wilcoxon signed-rank"
    assert e["test"]["p"] == pytest.approx(brute_wilcoxon_p(diff))
    assert e["test"]["difference"] == pytest.approx(np.median(diff))
    assert n["residual.dream.mean"]["value"] == pytest.approx(d["dream_z"].mean())
    assert n["residual.layer2.dream.mean"]["provenance"]["run_dirs"] == \
        ["07_residual_directions/r3", "07_residual_directions/r4", "07_residual_directions/r5"]
    layers = n["residual.last_minus_first_layer"]["test"]
    # layer 2's dream z (6.0, 5.1, 4.4) vs layer 1's (4.1, 4.2, 3.5): every pair but none ordered
    # the other way -> U = 9 of 9, rank-biserial 1
    assert layers["name"] == "Mann-Whitney U" and layers["statistic"] == 9 and layers["effect"] == 1.0


def test_dream_vs_dataset_pairs_each_run_with_the_best_example(made):
    e = numbers.build(made)["example.dream_minus_dataset"]
    assert e["value"] == pytest.approx(-0.3)                 # the pooled difference, as quoted
    assert e["values"] == pytest.approx([-4.0, -3.0, -0.3])  # per run minus the example
    assert e["test"]["difference"] == pytest.approx(-3.0)
    assert e["test"]["p"] == pytest.approx(brute_wilcoxon_p(np.array([-4.0, -3.0, -0.3])))
    # 04's seeds dream on the same (example) neuron, so their runs stand behind the claim too
    assert e["provenance"]["run_dirs"] == ([f"04_seed_variance/s{i}" for i in range(5)]
                                           + [f"05_dream_vs_dataset/d{i}" for i in range(3)])
    assert e["provenance"]["experiment"] == "05_dream_vs_dataset+04_seed_variance"


def test_document_is_strict_json_with_a_schema_version_and_a_flat_table(made):
    found = numbers.build(made)
    doc = json.loads(json.dumps(numbers.document(found, "embedded"), allow_nan=False))
    assert doc["schema"] == "fluentdream.numbers" and doc["schema_version"] == 1
    assert doc["bootstrap"]["resamples"] == 10_000 and "git_sha" in doc
    flat = numbers.flat(found)
    assert list(flat["key"]) == list(found) and flat["p"].notna().sum() == 5


def test_readme_rows_quote_the_numbers_and_state_the_verdict(made):
    doc = numbers.document(numbers.build(made), "embedded")
    lines = readme_table.render(doc).splitlines()
    header = lines[0].split(" | ")
    assert header[3] == "ours (embedded)" and header[4] == "runs"
    row = next(x for x in lines if x.startswith("| Residual alignment, no CE limit")).split(" | ")
    assert row[4] == "6" and row[5] == "yes"       # dream > dataset > random in all 6 directions
    assert "4.55 [" in row[3]                      # mean dream z, with its interval
    seeds = next(x for x in lines if x.startswith("| Large spread")).split(" | ")
    assert "median 2.00 [" in seeds[3] and seeds[4] == "5"
    layer = next(x for x in lines if x.startswith("| Alignment lowest")).split(" | ")
    assert layer[5].startswith("no")               # 2 layers: the lowest is an end layer
    assert "| not run | 0 | — |" in next(x for x in lines if x.startswith("| Phi-2"))


def test_splice_replaces_only_the_marked_block():
    text = f"intro\n{readme_table.BEGIN}\nold table\n{readme_table.END}\nrest\n"
    assert readme_table.splice(text, "new\n") == \
        f"intro\n{readme_table.BEGIN}\nnew\n{readme_table.END}\nrest\n"
    with pytest.raises(ValueError, match="results-table:begin"):
        readme_table.splice("no markers", "x")


def test_readme_has_a_column_group_per_model_and_keeps_the_ones_not_run_here(made, tmp_path):
    found = numbers.build(made)
    emb, s2 = numbers.document(found, "embedded"), numbers.document(found, "smollm2")
    s2.update(git_sha="0123456789abcdef", git_dirty=False)
    both = readme_table.render(emb, s2)
    header = both.splitlines()[0].split(" | ")
    assert header[3:9] == ["ours (embedded)", "runs", "holds?", "ours (smollm2)", "runs", "holds?"]
    row = next(x for x in both.splitlines() if x.startswith("| Residual alignment")).split(" | ")
    assert row[3:6] == row[6:9] and row[5] == "yes"          # same numbers: same cells, judged each
    assert "`--preset smollm2`" in row[1] and "- `results/smollm2/numbers.json` (git 0123456789)" in both
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.BEGIN}\n{both}{readme_table.END}\nrest\n")
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "numbers.json").write_text(json.dumps(emb))
    # this clone ran only the embedded preset: the SmolLM2 cells and source line come back unchanged
    readme_table.main(["--results", str(tmp_path), "--preset", "embedded", "--splice", str(readme)])
    assert readme.read_text() == f"intro\n{readme_table.BEGIN}\n{both}{readme_table.END}\nrest\n"
    alone = readme_table.render(emb)        # a README without a SmolLM2 column gets none
    assert readme_table.readme_columns(tmp_path, f"{readme_table.BEGIN}\n{alone}{readme_table.END}") == alone


def test_cli_without_numbers_exits_2_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "analysis.readme_table", "--results", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "make tables" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_smoke_runs_give_numbers_that_trace_to_their_runs(smoke_results):  # noqa: F811
    build_tables.build(smoke_results)
    doc = json.loads((smoke_results / "numbers.json").read_text())
    claims = {e["claim"] for e in doc["numbers"].values()}
    assert {"fluency", "logits", "six_neurons", "seed_variance", "growth", "restarts"} <= claims
    for key, e in doc["numbers"].items():
        assert e["runs"] == len(e["provenance"]["run_dirs"]), key
        for rel in e["provenance"]["run_dirs"]:
            prov = json.loads((smoke_results / rel / "provenance.json").read_text())
            assert prov["git_sha"] in e["provenance"]["git_shas"]
    seeds = pd.read_csv(smoke_results / "tables" / "seed_variance.csv")
    assert doc["numbers"]["seeds.max.median"]["value"] == pytest.approx(seeds["max_activation"].median())
    assert doc["numbers"]["seeds.max.median"]["runs"] == len(seeds)
    limits = json.loads((smoke_results / "01_fluency_calibration" / "thresholds.json").read_text())
    assert doc["numbers"]["fluency.limit.ce_5"]["value"] == pytest.approx(limits["ce_5"])
    growth = [e for k, e in doc["numbers"].items() if k.startswith("growth.")]
    assert all(e["runs"] == 1 for e in growth)     # Fig 2b is one run
    table = readme_table.render(doc)
    assert table.count("\n| ") == len(readme_table.ROWS)


def test_per_run_tables_equal_a_direct_reading_of_the_histories(b_results):  # noqa: F811
    preset = b_results / "smoke"
    t = units.tables(preset)
    examples = pd.read_parquet(preset / "05_dream_vs_dataset" / "mining" / "examples.parquet")
    exps = {"example": "05_dream_vs_dataset", "polysemantic": "06_polysemantic_neuron"}
    assert set(t["dataset_runs"]["role"]) == set(exps)
    for r in t["dataset_runs"].itertuples():
        _, f, ce = History.load(preset / exps[r.role] / "runs" / r.run / "history.npz").candidates()
        ex = examples[examples["target"] == r.neuron]
        best = ex.loc[ex["window_activation"].idxmax()]
        under = f[ce <= best["window_xentropy"]]
        assert r.best_dataset == pytest.approx(best["window_activation"])
        assert r.best_dream == pytest.approx(f.max())
        if len(under):
            assert r.dream_at_dataset_ce == pytest.approx(under.max())
        else:
            assert np.isnan(r.dream_at_dataset_ce)
    on_disk = sorted(str(p.parent.relative_to(preset)) for p in preset.glob("*/**/history.npz")
                     if (p.parent / "summary.json").exists())
    assert sorted(t["runs"]["path"]) == on_disk
    zero = t["residual_slack_runs"].query("slack == 0").set_index("target")["z"]
    dirs = residual.tables(preset)["residual_directions"].set_index("target")["dream_z"]
    assert zero.to_dict() == pytest.approx(dirs.loc[zero.index].to_dict())   # no slack: the best z


def test_sampled_neurons_are_paired_over_neurons():
    dream = [3.0, 2.5, np.nan, 4.0, 1.0, 5.5, 2.2]
    data = [2.0, 2.9, 1.0, 3.1, 0.2, 3.0, 1.9]
    table = pd.DataFrame(dict(neuron=[f"L1.N{i}" for i in range(7)], threshold=6.5,
                              run=[f"05_dream_vs_dataset/runs/n{i}" for i in range(7)],
                              dream_best=dream, dataset_best=data))
    index = run_index("05_dream_vs_dataset", [f"n{i}" for i in range(7)], list(table["neuron"]))
    n = numbers.build(dict(dataset_sampled=table, runs=index))
    d = np.array(dream) - np.array(data)
    e = n["sampled.dream_minus_dataset"]
    assert e["value"] == pytest.approx(np.nanmean(d)) and e["n"] == 6   # the mean: where both are
    # the neuron without a dream loses its pair, beyond the largest real difference (2.5)
    assert e["test"]["p"] == pytest.approx(brute_wilcoxon_p(np.nan_to_num(d, nan=-3.5)))
    assert e["test"]["n"] == 7 and e["test"]["unreached"] == 1
    assert n["sampled.wins"]["value"] == 5 and n["sampled.wins"]["n"] == 7
    assert e["runs"] == 7
    row = next(x for x in readme_table.render(numbers.document(n, "embedded")).splitlines()
               if x.startswith("| Beyond the paper's one neuron")).split(" | ")
    assert "wins on 5 of 7" in row[3] and "1 of them unreached" in row[3] and row[4] == "7"


@pytest.mark.parametrize("iters, mark", [(None, ""), ([300] * 7, ""), ([10] * 7, " at T = 10"),
                                         ([10] * 6 + [25], " at T = 10–25")])
def test_a_verdict_made_short_of_table_1s_iterations_says_at_what_budget(iters, mark):
    """A 'no' at T = 10 is not the paper's claim failing at T = 300: the full and compact
    tables carry the runs' iteration counts whenever they stop short of 300."""
    table = pd.DataFrame(dict(neuron=[f"L1.N{i}" for i in range(7)], threshold=6.5,
                              run=[f"05_dream_vs_dataset/runs/n{i}" for i in range(7)],
                              dream_best=[3.0] * 7, dataset_best=[2.0] * 7))
    index = run_index("05_dream_vs_dataset", [f"n{i}" for i in range(7)], list(table["neuron"]))
    if iters is not None:
        index["iters"] = iters
    doc = numbers.document(numbers.build(dict(dataset_sampled=table, runs=index)), "embedded")
    row = next(x for x in readme_table.render(doc).splitlines()
               if x.startswith("| Beyond the paper's one neuron")).split(" | ")
    assert row[5].startswith("yes") and row[5].endswith(mark)
    from analysis import readme_compact
    sampled = next(r for r in readme_table.ROWS if r.claim == "sampled_neurons")
    assert readme_compact.cell(sampled, Numbers(doc)).startswith("yes" + mark + ":")


def _layers(*cis):
    return Numbers({"numbers": {f"residual.layer{i + 1}.dream.mean": dict(value=sum(ci) / 2, ci=ci)
                                for i, ci in enumerate(cis)}})


def test_the_layer_verdict_needs_intervals_apart_and_can_go_each_way():
    holds = readme_table._layers_holds
    assert holds(_layers([6, 7], [4, 5], [6, 7], [6.5, 7])) == "yes"          # L2 below both ends
    assert holds(_layers([3, 4], [5, 6], [6, 7], [6.5, 7])).startswith("no")  # L1 below all inner
    # the embedded runs' numbers (LOG.md, 2026-12-08): bf16 has L2 lowest, fp32 L1; both undecided
    bf16 = _layers([4.63, 6.27], [4.71, 5.45], [5.87, 6.34], [6.45, 7.03])
    fp32 = _layers([4.50, 6.26], [4.80, 6.03], [6.26, 6.27], [6.79, 7.19])
    assert holds(bf16).startswith("undecided") and holds(fp32).startswith("undecided")


def test_the_trigger_family_verdict_needs_a_second_family_in_two_prompts():
    def holds(*tokens):
        return readme_table._attribution_holds(
            Numbers({"numbers": {"attribution.top_tokens": dict(value=len(set(tokens)),
                                                                tokens=list(tokens))}}))
    assert holds(" a", " a", " b", " b", " a") == "yes"
    assert holds(*[" represented"] * 5) == "no: one family"
    assert holds(" defined", *[" represented"] * 4).startswith("undecided")
