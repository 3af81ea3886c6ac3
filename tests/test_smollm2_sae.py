"""SmolLM2-135M's shipped SAE (smollm2-L15): its files and card, its encoder against the TopK
formula written out here, and a few iterations of a latent dream on the real model."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fluentdream as fd
from fluentdream.core.scoring import Scorer
from fluentdream.targets.sae import SHIPPED

DIR = SHIPPED["smollm2-L15"]


@pytest.fixture(scope="module")
def smollm2():
    return fd.load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def weights():
    return {n: t.float() for n, t in load_file(str(DIR / "sae_weights.safetensors")).items()}


def test_the_sae_ships_in_saelens_v6_layout_with_its_card():
    cfg = json.loads((DIR / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["metadata"]["hook_name"]) == \
        ("topk", 576, "blocks.15.hook_resid_pre")
    assert cfg["d_sae"] >= 4096 and cfg["normalize_activations"] == "none"
    card = (DIR / "SAE_CARD.md").read_text()
    for needed in ("tokens seen", "fraction of variance unexplained", "L0", "dead latents", "min"):
        assert needed in card
    metrics = json.loads((DIR / "training_metrics.json").read_text())
    assert 0 < metrics["heldout"]["fvu"] < 0.5 and metrics["tokens_seen"] > 0
    assert sum(f.stat().st_size for f in DIR.iterdir()) < 12e6          # the package's growth
    sae = fd.load_sae("smollm2-L15")
    assert (sae.site, sae.k, sae.d_sae) == (("resid", 15), cfg["k"], cfg["d_sae"])


def test_the_encoder_is_the_topk_formula(smollm2, weights):
    """f = the k largest of (x - b_dec) W_enc + b_enc, rectified, the rest 0; x the residual
    stream entering block 15 (hidden_states[15]) of real text."""
    lm, w = smollm2, weights
    k = json.loads((DIR / "cfg.json").read_text())["k"]
    texts = ["The cat sat on the mat and looked out of the window at the rain",
             "def add(a, b):\n    return a + b  # the sum of two numbers here"]
    ids = torch.tensor([lm.tokenizer(t).input_ids[:12] for t in texts])            # (2, 12)
    with torch.no_grad():
        x = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[15].float()  # (2, 12, 576)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]                                     # (2, 12, d_sae)
    kth = pre.sort(dim=-1, descending=True).values[..., k - 1:k]
    want = torch.where(pre >= kth, pre.clamp(min=0), torch.zeros(()))
    sae = fd.load_sae("smollm2-L15")
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-4, atol=1e-4)
    assert ((want > 0).sum(-1) <= k).all() and (want[:, 1:] > 0).any()
    j = int(want[:, -1].sum(0).argmax())                     # a latent active at the last token
    f, _ = Scorer(lm, fd.parse_target(f"sae:smollm2-L15:{j}", lm), retokenize=False).score(ids)
    torch.testing.assert_close(f, want[:, -1, j], rtol=1e-3, atol=1e-3)
    g, _ = Scorer(lm, fd.parse_target(f"sae:smollm2-L15:{j}:pre", lm), retokenize=False).score(ids)
    torch.testing.assert_close(g, pre[:, -1, j], rtol=1e-3, atol=1e-3)


def test_a_few_iterations_of_a_latent_dream(smollm2):
    """EPO on a latent's pre-activation (the EPO authors' choice for SAE latents): every
    recorded value is the latent's pre-activation of the recorded prompt, and the best rises."""
    lm = smollm2
    target = fd.parse_target("sae:smollm2-L15:7:pre", lm)
    cfg = fd.EPOConfig(iters=3, population_size=2, explore_per_pop=4, topk=16, seq_len=6, seed=0)
    hist = fd.epo(lm, target, cfg)
    ids, f, ce = hist.candidates()
    assert len(hist) == 3 and np.isfinite(f).all() and np.isfinite(ce).all()
    again, _ = Scorer(lm, target, retokenize=False).score(torch.from_numpy(ids[:8]).long())
    np.testing.assert_allclose(again.numpy(), f[:8], rtol=1e-3, atol=1e-3)
    front = fd.pareto_frontier([hist], lm.tokenizer)
    assert len(front) >= 1 and front.target.max() == pytest.approx(f.max(), abs=1e-4)
