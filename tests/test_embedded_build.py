"""The embedded-model build script (smoke preset) and the shipped embedded model (DESIGN §6)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "00_build_embedded_model.py"
EMBEDDED = REPO / "src" / "fluentdream" / "embedded"
CORPUS = REPO / "data" / "corpus"


def load_script():
    spec = importlib.util.spec_from_file_location("build_embedded_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def test_smoke_build_loads_and_round_trips(tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    metrics = load_script().main(["--preset", "smoke", "--out", str(tmp_path)])

    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Return the number of items in a container."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id not in ids  # no BOS/EOS added
    model = GPTNeoXForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert model.dtype == torch.float32 and model.config.use_parallel_residual
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()

    ds = load_dataset("parquet", data_files={s: str(tmp_path / "corpus" / f"{s}.parquet")
                                             for s in ("train", "validation")})
    assert set(ds["train"].column_names) == {"text", "source"} and len(ds["validation"]) > 0
    saved = json.loads((tmp_path / "training_metrics.json").read_text())
    assert saved["val_ce_nats_per_token"] == metrics["val_ce_nats_per_token"]
    assert np.isfinite(saved["window_ce_mean"]) and (tmp_path / "MODEL_CARD.md").exists()


@pytest.mark.skipif(not (EMBEDDED / "config.json").exists(), reason="embedded model not built")
def test_shipped_model_matches_its_card():
    import pandas as pd
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    metrics = json.loads((EMBEDDED / "training_metrics.json").read_text())
    assert (EMBEDDED / "model.safetensors").stat().st_size <= 10 * 2**20
    tok = AutoTokenizer.from_pretrained(EMBEDDED)
    model = GPTNeoXForCausalLM.from_pretrained(EMBEDDED, dtype=torch.float32).eval()
    assert tok.decode(tok(" the dog")["input_ids"]) == " the dog"

    # the card's definition: validation documents joined by <|endoftext|>, non-overlapping blocks
    texts = pd.read_parquet(CORPUS / "validation.parquet").text.tolist()
    ids = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    stream = np.array([t for e in ids for t in (*e.ids, tok.eos_token_id)], dtype=np.int64)
    length = metrics["context_length"] + 1
    n = (len(stream) - 1) // metrics["context_length"]
    pick = np.linspace(0, n - 1, min(n, 300)).astype(int) * metrics["context_length"]
    x = torch.from_numpy(stream[pick[:, None] + np.arange(length)])
    with torch.no_grad():
        logits = torch.cat([model(input_ids=c[:, :-1]).logits for c in x.split(100)])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()
    assert abs(ce - metrics["val_ce_nats_per_token"]) < 0.1, (ce, metrics["val_ce_nats_per_token"])
