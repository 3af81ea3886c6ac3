"""fluentdream: fluent dreaming for language models (EPO, arXiv 2402.01702).

    import fluentdream as fd
    lm = fd.load_model("embedded")
    hist = fd.epo(lm, fd.parse_target("L1.N5", lm), fd.EPOConfig(seed=0))
    print(fd.pareto_frontier([hist], lm.tokenizer).table())

The package's parts, each importing only those below it (tests/test_layout.py checks it):
  cli/      the `fluentdream` command
  report/   pages of saved runs: a static site that opens offline (fd.report)
  runs/     run directories, locks, W&B tracking, sweeps
  data/     corpora, mining, calibration
  core/     the algorithm: EPOConfig, EPO, the Scorer, History, frontiers
  targets/  Target kinds and SAEs
  models/   loading models (HF, the embedded model, GGUF), hardware
and the shared modules every part may import: errors (UserError), files (atomic writes),
provenance (versions, git) and moved (the old module paths, for one release).

Imports: report, core, targets, models and the shared modules.
"""
import sys

from .core import attribution, batched
from .core.batched import IterationReport
from .core.config import EPOConfig
from .core.context import Context
from .core.epo import epo, gcg
from .core.frontier import Frontier, frontier_quality, pareto_frontier
from .core.history import EPOState, History
from .core.scoring.forward import xentropy
from .core.scoring.scorer import Scorer
from .errors import UserError
from .moved import install as _install_old_paths
from .models.hardware import fast_dtype
from .models.load import load_model, wrap_model
from .models.loaded import LoadedModel
from .provenance import __version__  # noqa: F401 (fd.__version__)
from .report import report
from .targets.kinds import (AttentionEntry, CustomTarget, Logit, Neuron, ResidualDirection,
                            SAELatent, Target, parse_target)
from .targets.sae import SAE, load_sae

__all__ = ["EPOConfig", "IterationReport", "epo", "gcg", "Scorer", "xentropy", "Frontier",
           "fast_dtype", "frontier_quality", "pareto_frontier", "EPOState", "History", "LoadedModel",
           "load_model", "wrap_model", "AttentionEntry", "CustomTarget", "Logit", "Neuron",
           "ResidualDirection", "SAELatent", "Target", "UserError", "parse_target", "attribution",
           "batched", "SAE", "load_sae", "Context", "report"]

_install_old_paths(sys.modules[__name__])
