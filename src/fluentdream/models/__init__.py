"""Language models: load one and find its parts (DESIGN §3, §6).

    lm = fd.load_model("embedded")          # also "smollm2-135m", a .gguf file, a local HF dir, a hub name
    lm.mlp_out_proj(1), lm.attention(1)     # where targets read the model

  loaded    LoadedModel and the ARCHITECTURES table: where a model's parts live
  load      load_model, wrap_model
  gguf      GGUF files read as dense checkpoints, cached (SmolLM2 by name)
  hardware  which dtype is fast here, which CPU this is, whether a device exists

The bottom layer. Imports: the shared modules; never targets, core, data, runs or cli.
"""
from .gguf import SMOLLM2, dense_checkpoint, find_gguf, gguf_source, smollm2_gguf
from .hardware import check_device, cpu_name, fast_dtype
from .load import DTYPES, EMBEDDED_DIR, default_device, keep_freed_memory, load_model, wrap_model
from .loaded import ARCHITECTURES, Arch, LoadedModel, check_architecture, max_positions

__all__ = ["ARCHITECTURES", "DTYPES", "EMBEDDED_DIR", "Arch", "LoadedModel", "check_architecture",
           "default_device", "keep_freed_memory", "load_model", "max_positions", "wrap_model",
           "SMOLLM2", "dense_checkpoint", "find_gguf", "gguf_source", "smollm2_gguf", "check_device",
           "cpu_name", "fast_dtype"]
