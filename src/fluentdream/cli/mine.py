"""The `fluentdream mine` command: max-activating dataset examples (DESIGN §8).

    fluentdream mine --model embedded --dataset embedded --layers 1,2 --top-k 64
    fluentdream mine --model embedded --layers 2 --resid-directions 16 --no-neurons
    fluentdream mine --model embedded --sae embedded-L2          # every latent of an SAE
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_mine_parser(sub) -> None:
    from ..data.mining import MineConfig

    p = sub.add_parser("mine", help="max-activating dataset examples for every feature of layers")
    p.add_argument("--model", required=True, help="'embedded', a local HF directory or a hub name")
    p.add_argument("--dataset", default="embedded", help="'embedded' (the repo's data/corpus), "
                   "'general' (data/general: books, reference works, manuals, code), a local "
                   "parquet/json/jsonl/txt/csv file or directory, or a hub name such as "
                   "monology/pile-uncopyrighted (streamed) [default: embedded]")
    p.add_argument("--split", default=None, help="dataset split of a hub dataset or a directory "
                   "of split files; a single file is one split [default: train]")
    p.add_argument("--text-column", default="text", help="column holding the documents' text")
    p.add_argument("--layers", default=None, help="comma-separated layers, e.g. 1,2 (needed "
                   "unless --sae is given)")
    p.add_argument("--sae", action="append", default=[], metavar="DIR", help="also mine every "
                   "latent of this SAE (SAELens or sparsify directory, or a shipped SAE such as "
                   "embedded-L2); repeatable")
    p.add_argument("--top-k", type=int, default=MineConfig.top_k, help="examples kept per feature")
    p.add_argument("--tokens", type=int, default=None, help="stop after N dataset tokens "
                   "[default: the whole split]")
    p.add_argument("--context", type=int, default=MineConfig.context, help="tokens per context window")
    p.add_argument("--window", type=int, default=MineConfig.window, help="tokens of each example "
                   "re-scored alone, ending at its max token (the dream prompt length)")
    p.add_argument("--batch-size", type=int, default=MineConfig.batch_size,
                   help="context windows per forward pass")
    p.add_argument("--resid-directions", type=int, default=0, metavar="N", help="also mine N "
                   "random residual directions entering each layer (targets resid:L:vS..)")
    p.add_argument("--resid-seed", type=int, default=0, help="seed S of the first direction")
    p.add_argument("--no-neurons", action="store_true", help="mine residual directions only")
    p.add_argument("--baseline-prompts", type=int, default=1024, help="random-token prompts for "
                   "the residual directions' z-score baseline (paper §3.5); 0 skips it")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="ray shards documents over --workers tasks (RAY_ADDRESS joins a cluster)")
    p.add_argument("--workers", type=int, default=2, help="Ray tasks (one GPU each on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... [default: cuda if available]")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--out", default=None, help="output directory "
                   "[default: results/mining/MODEL__DATASET__L<layers>]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_mine)


def cmd_mine(args: argparse.Namespace) -> int:
    from ..data import calibration, mining
    from ..files import writable_dir
    from ..models.hardware import check_device
    from ..models.load import load_model
    from ..runs import slug

    from ..targets.sae import load_sae

    if args.layers is None and not args.sae:
        raise UserError("nothing to mine: give --layers (neurons, residual directions), --sae, or both")
    try:
        layers = sorted({int(x) for x in (args.layers or "").split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--layers must be comma-separated integers such as 1,2; got {args.layers!r}") from None
    if args.resid_directions < 0 or (args.no_neurons and not args.resid_directions and not args.sae):
        raise UserError("--resid-directions must be >= 0, and > 0 with --no-neurons (unless --sae)")
    saes = [load_sae(d) for d in args.sae]          # a bad SAE fails before the model loads
    cfg = mining.MineConfig(top_k=args.top_k, context=args.context, window=args.window,
                            batch_size=args.batch_size, tokens=args.tokens)
    what = "__".join(([f"L{'-'.join(map(str, layers))}"] if layers else []) + [s.label for s in saes])
    out = Path(args.out or Path("results", "mining", f"{slug(Path(args.model).name)}__"
                                f"{slug(Path(args.dataset).name)}__{slug(what)}"))
    if args.split not in (None, "train") and Path(args.dataset).expanduser().is_file():
        raise UserError(f"--split {args.split}: {args.dataset} is a single file, which is one "
                        "split; drop --split, or give a directory holding one file per split")
    check_device(args.device)
    writable_dir(out.parent)
    source = mining.DataSource(args.dataset, args.split or "train", args.text_column)
    source.open()   # a bad dataset fails before a big model loads
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    feats = [] if args.no_neurons else [mining.neurons(layer) for layer in layers]
    feats += [mining.random_residual(layer, lm.d_model, args.resid_directions, args.resid_seed)
              for layer in layers if args.resid_directions]
    feats += [mining.sae_latents(s) for s in saes]
    from tqdm.auto import tqdm
    bars = {}

    def bar(name: str, total: int | None, unit: str):
        if name not in bars:   # made on first use, so an early error prints one line only
            for other in bars.values():
                other.close()
            bars[name] = tqdm(total=total, desc=name, unit=unit, unit_scale=True,
                              disable=args.no_progress)
        return bars[name]

    def rescore_progress(done: int, total: int) -> None:
        b = bar("re-score alone", total, "window")
        b.update(done - b.n)
    try:
        res = mining.mine(lm, source, feats, cfg, args.executor, args.workers,
                          lambda n: bar("scan", cfg.tokens, "tok").update(n), rescore_progress)
    finally:
        for b in bars.values():
            b.close()
    resid = [f for f in feats if f.directions is not None]
    if resid and args.baseline_prompts:
        base = calibration.random_prompt_baseline(lm, resid, args.baseline_prompts, cfg.window,
                                                  seed=args.resid_seed)
        mining.write_parquet(base, out / "baseline.parquet")
        res.summary["baseline"] = dict(file="baseline.parquet", n_prompts=args.baseline_prompts,
                                       n_tokens=cfg.window)
    mining.save(res, out)
    s = res.summary
    print(f"{len(res.examples)} examples of {sum(f.size(lm) for f in feats)} features from "
          f"{s['tokens_scanned']} tokens ({s['documents']} documents) in {s['seconds']:.1f} s "
          f"(scan {s['tokens_per_second']:.0f} tokens/s); saved to {out}")
    return 0
