"""The algorithm, pure: EPO and what it needs to score, record and compare prompts (paper §2,
DESIGN §4). No disk other than the paths it is given, no W&B, no command line; progress goes
through logging, callbacks and a progress bar on stderr.

  config       EPOConfig, the hyperparameters (paper Table 1)
  epo          fd.epo and fd.gcg: one run of the engine
  batched      the engine: many runs in lockstep, each iteration reported to a callback
  steps        the EPO steps, named after the paper's (propose, select, restart, ...)
  operators    mutation operators (swap, swap2, insert, delete)
  checks       settings that cannot run on a model, refused before anything is computed
  scoring/     the Scorer: target, CE and gradients of prompts, packed forward passes
  history      every candidate of a run, and the loop state to resume it
  frontier     the Pareto frontier and its quality
  attribution  causal token attribution by resampling
  context      fixed tokens around the optimized ones
  tokens       the tokens a dream may hold, text round trips
  ragged       prompts of several lengths in one array
  progress     progress bars on stderr

Imports: targets, models and the shared modules; never data, runs or cli.
"""
