"""The Makefile pipeline per preset (`make -n -B`: every command it would run, none run) and the
smollm2 preset of each experiment."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import load_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def planned(preset: str) -> str:
    res = subprocess.run(["make", "-n", "-B", "figures", f"PRESET={preset}", "JOBS=1"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    return res.stdout


def test_smollm2_pipeline_runs_01_to_08_and_writes_beside_the_embedded_outputs():
    plan = planned("smollm2")
    ran = sorted(set(re.findall(r"experiments/(\d\d)_\w+\.py --preset smollm2", plan)))
    assert ran == ["01", "02", "03", "04", "05", "06", "07", "08"]      # no SAE of SmolLM2: no 10
    figures = re.findall(r"-m paper_figures\.(\w+) --tables results/smollm2/tables --out (\S+)", plan)
    assert figures and {out for _, out in figures} == {"paper_figures/out/smollm2"}
    assert "fig7_sae_latents" not in {name for name, _ in figures}
    assert re.search(r"analysis.readme_table --preset smollm2 \\\s+--splice RESULTS.md --compact README.md", plan)


def test_embedded_pipeline_keeps_its_outputs_and_experiment_10():
    plan = planned("embedded")
    assert "experiments/10_sae_latents.py --preset embedded" in plan
    assert "-m paper_figures.fig7_sae_latents --tables results/embedded/tables --out paper_figures/out\n" in plan


@pytest.mark.parametrize("name", ["01_fluency_calibration", "02_token_logits", "03_six_neurons",
                                  "04_seed_variance", "05_dream_vs_dataset", "06_polysemantic_neuron",
                                  "07_residual_directions"])
def test_each_smollm2_preset_dreams_on_smollm2_at_table_1_but_t(name):
    cfg = load_experiment(name).PRESETS["smollm2"]
    assert cfg.model == "smollm2-135m"
    epo = getattr(cfg, "epo", cfg)
    if name != "01_fluency_calibration":
        assert epo.iters in (50, 100) and epo.population_size == 8 and epo.explore_per_pop == 32
        assert epo.topk == 512


def test_the_ladder_spans_smollm2s_30_layers():
    assert load_experiment("03_six_neurons").ladder(30) == ["L0.N0", "L6.N1", "L12.N2", "L17.N3",
                                                          "L23.N4", "L29.N5"]
