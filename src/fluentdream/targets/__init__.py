"""Targets: the model internal a dream maximizes, and the SAEs some of them read (DESIGN §5).

    tgt = fd.parse_target("L1.N5", lm)          # or "logit: dog", "resid:L2:7", "sae:embedded-L2:3"
    sae = fd.load_sae("embedded-L2")

  kinds  Target and its kinds (Neuron, Logit, ResidualDirection, AttentionEntry, SAELatent,
         CustomTarget), and parse_target for the string shorthands
  sae    sparse autoencoders read from disk (SAELens, sparsify), every architecture

Imports: models and the shared modules; never core, data, runs or cli.
"""
from .kinds import (AttentionEntry, CustomTarget, Logit, Neuron, Position, ResidualDirection,
                    SAELatent, Site, Target, parse_target)
from .sae import SAE, load_sae

__all__ = ["AttentionEntry", "CustomTarget", "Logit", "Neuron", "Position", "ResidualDirection",
           "SAELatent", "Site", "Target", "parse_target", "SAE", "load_sae"]
