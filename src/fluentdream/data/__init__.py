"""Data: corpora, max-activating dataset examples and the distributions dreams are read against
(DESIGN §8; paper §3).

    from fluentdream.data import calibration, mining
    res = mining.mine(lm, mining.DataSource("embedded"), [mining.neurons(1)])

  corpus       text datasets streamed through `datasets`, cut into documents and windows
  features     what mining ranks: every feature of a site, and its exact running top-k
  mining       the scan of a corpus for each feature's top examples, re-scored alone
  calibration  the CE of dataset slices (fluency) and random-prompt baselines

Imports: core, targets, models and the shared modules; never runs or cli.
"""
