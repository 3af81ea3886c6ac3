"""Load a causal LM by name or path into a LoadedModel (fluentdream.models.loaded).

    lm = fd.load_model("embedded")                        # shipped with the package
    lm = fd.load_model("EleutherAI/pythia-12b-deduped", device="cuda", dtype="float16")
    lm = fd.load_model("/path/to/a/local/hf/dir")
    lm = fd.load_model("smollm2-135m")   # a real pretrained LM offline (GGUF; models.gguf)
    lm = fd.wrap_model(model, tokenizer, "tiny")          # an HF model built in memory
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .gguf import SMOLLM2, dense_checkpoint, find_gguf, gguf_source, smollm2_gguf
from .loaded import LoadedModel, check_architecture

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).parents[1] / "embedded"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (returns False where that is not glibc).

    By default glibc maps every allocation above 128 KB to fresh pages and unmaps it when freed,
    so each activation tensor of a forward pass page-faults all its memory in again; in the VMs
    we measured, that made the scoring of one EPO iteration on CPU 10-20% slower (LOG.md). A
    mapping threshold of 32 MB (glibc's largest) and no trimming keep such buffers in the heap.
    It only changes how much memory the process keeps; it is called for models on the CPU.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def wrap_model(model: nn.Module, tokenizer, name: str) -> LoadedModel:
    """Wrap an already-built HF causal LM (tests build tiny random ones from configs)."""
    arch = check_architecture(model.config.model_type)
    model.eval()
    model.requires_grad_(False)
    if next(model.parameters()).device.type == "cpu":
        keep_freed_memory()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, arch=arch)


def load_model(name_or_path: str, device: str | None = None, dtype: str | torch.dtype | None = None,
               ) -> LoadedModel:
    """Load "embedded", "smollm2-135m", a local HF directory, a .gguf file (or a directory holding
    one; converted once to a cached dense checkpoint, see fluentdream.models.gguf), or a hub name (hub names
    need the network or the HF cache).

    dtype: "float32" | "float16" | "bfloat16" | torch.dtype | None (the checkpoint's own, fp32 on
    CPU when the checkpoint is half precision and no dtype is asked for).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    device = device or default_device()
    path = str(EMBEDDED_DIR) if name_or_path == "embedded" else name_or_path
    if name_or_path == "embedded" and not (EMBEDDED_DIR / "config.json").exists():
        raise UserError(f"the embedded model is missing from {EMBEDDED_DIR}; rebuild it with "
                        "`python experiments/00_build_embedded_model.py`")
    gguf_file = smollm2_gguf() if name_or_path == SMOLLM2 else find_gguf(path)
    if gguf_file is not None:
        path = str(dense_checkpoint(gguf_file))
    # Hub ids are "name" or "org/name"; anything else that is not there is a missing path.
    looks_local = (Path(path).exists() or path.startswith((os.sep, ".", "~"))
                   or path.count("/") > 1)
    if looks_local and not Path(path).is_dir():
        raise UserError(f"model path {path!r} does not exist; give a local HF model directory, "
                        f"a .gguf file, 'embedded', {SMOLLM2!r}, or a hub name such as "
                        "EleutherAI/pythia-1.4b")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]} "
                        f"(allowed: 'embedded', {SMOLLM2!r}, a local HF model directory, a .gguf "
                        "file, or a hub name available offline in the HF cache or online)") from None
    check_architecture(config.model_type)  # before loading any weights
    if dtype is None:
        ckpt = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
        half = str(ckpt).replace("torch.", "") in ("float16", "bfloat16")
        dtype = torch.float32 if (device == "cpu" and half) else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to(device)
    lm = wrap_model(model, tokenizer, name_or_path)
    lm.source = (gguf_source(gguf_file, name_or_path) if gguf_file is not None else
                 dict(path=name_or_path, revision=getattr(config, "_commit_hash", None)))
    log.info("loaded %r", lm)
    return lm
