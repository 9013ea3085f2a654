"""`prunerzero prune`: prune a model and measure it (``api.prune`` over a ``PruneConfig``)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import PruneConfig
from ..errors import UserError, short
from ..settings import ROW_BAND, resolve
from .options import add_settings, given, nonempty, parse_text

# In --help order; every PruneConfig field is an option (metric also comes as --metric-file).
OPTIONS = ("model", "method", "metric", "sparsity", "pattern", "group", "calib_data", "nsamples", "seqlen", "seed",
           "bos", "batch_size", "within_layer", "device", "dtype", "device_map", "max_memory", "offload_folder",
           "calib_dtype", "percdamp", "blocksize", "gradients", "grad_chunk_layers", "prune_head", "reconstruct",
           "reconstruct_mode", "admm_iters", "cg_iters", "mask_only", "allocation", "owl_m", "owl_lambda", "eval_data",
           "eval_seqlen", "eval_tokens", "zero_shot", "zero_shot_limit", "save", "save_model", "overwrite",
           "skip_dense")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model and measure it")
    p.add_argument("--config", type=nonempty, metavar="FILE.json",
                   help="settings from a JSON file (keys: the prune options with _ for -); options given here win")
    add_settings(p, PruneConfig, OPTIONS[:3])
    p.add_argument("--metric-file", type=nonempty, help="a metric saved as .json (Pruner-Zero tree or ours) or .txt")
    add_settings(p, PruneConfig, OPTIONS[3:])
    p.add_argument("--dry-run", action="store_true",
                   help="check every setting, print the effective config, load nothing")
    p.set_defaults(func=cmd_prune)


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The PruneConfig of parsed `prune` arguments: command line > --config file > defaults."""
    from ..config import read_config_file

    values = given(args, PruneConfig)
    if "metric" in values and args.metric_file is not None:
        raise UserError("pass either --metric or --metric-file, not both")
    if args.metric_file is not None:
        # Always a path: check it now, so a folder or a file name without .json/.txt is not read as
        # a formula (and a bad file fails before the model loads).
        from ..symbolic import load_metric_file

        load_metric_file(args.metric_file)
        if not args.metric_file.strip().lower().endswith((".json", ".txt")):
            raise UserError(f"--metric-file {short(args.metric_file)}: name a .json or .txt file")
        values["metric"] = args.metric_file
    file: dict[str, Any] = {}
    if args.config:
        # A string in the file means what it means on the command line (e.g. "eval_data": "none").
        file = {k: parse_text(PruneConfig, k, v) if isinstance(v, str) else v
                for k, v in read_config_file(args.config).items()}
    return resolve(PruneConfig, values, file)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..api import prune, validate

    cfg = prune_config(args)
    if args.dry_run:
        validate(cfg)
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    results = prune(cfg, progress=not args.quiet)
    print_prune_summary(results)
    return 0


def _ppl(record: dict | None) -> str:
    return "-" if not record else f"{record['ppl']:.2f}"


GROUP_WORDS = {"row": "per output row", "layer": "across each layer",
               "band": f"across each layer, each row within {ROW_BAND:g} of the target"}


def print_prune_summary(results: dict[str, Any]) -> None:
    details = results.get("method_details", {})
    what = details.get("formula") or results["method"]
    print(f"method     {results['method']}  ({what})")
    # Which weights competed: the same formula prunes very differently per row and across the layer.
    group = f"  compared {GROUP_WORDS.get(results.get('group', 'row'), 'per output row')}" \
        if results["pattern"] == "unstructured" else ""
    print(f"pattern    {results['pattern']}{group}  target {results['target_sparsity']:.4f}  "
          f"actual {results['actual_sparsity']:.4f}")
    if "allocation" in results:
        a = results["allocation"]
        print(f"allocation {a['kind']} (M {a['m']:g}, lambda {a['lambda']:g}): layer sparsity "
              f"{min(a['layer_sparsity']):.4f}..{max(a['layer_sparsity']):.4f}")
    if "head" in results:
        tied = ("  (tied: the input embeddings are the same matrix)"
                if results["head"]["tied_to_input_embeddings"] else "")
        print(f"head       {results['head']['name']} pruned{tied}")
    if "pruned" in results:
        ev = results["eval"]
        name = ev.get("source") if ev.get("source") != "file" else ev.get("path")
        print(f"perplexity dense {_ppl(results.get('dense'))}  pruned {_ppl(results['pruned'])}"
              f"  ({name}, {ev['tokens']} tokens, seqlen {ev['seqlen']})")
    secs = results["seconds"]
    print("seconds    " + "  ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    if "zero_shot" in results:
        from ..eval.zeroshot import format_zeroshot_table

        print(format_zeroshot_table(results["zero_shot"]))
    if results["config"].get("save"):
        model = "  + model/" if results.get("saved_model") else ""
        print(f"saved      {results['config']['save']}/results.json{model}")
