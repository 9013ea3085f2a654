"""`prunerzero eval`: perplexity / zero-shot accuracy of any model, pruned or not (``api.evaluate_model``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PruneConfig
from .options import add_settings, nonempty


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity / zero-shot accuracy of any model")
    add_settings(p, PruneConfig, ("model",), defaults=True, model={"required": True, "default": None})
    add_settings(p, PruneConfig, ("device", "dtype", "device_map", "max_memory", "offload_folder", "eval_data",
                                  "eval_seqlen", "eval_tokens", "zero_shot", "zero_shot_limit", "bos"), defaults=True,
                 eval_seqlen={"help": "evaluation window (default: the model's context, at most 2048)"})
    p.add_argument("--json", type=nonempty, help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import io
    from ..api import evaluate_model

    if args.json:
        io.check_writable_file(args.json, "--json")  # before the model loads, not after the evaluation

    out = evaluate_model(args.model, args.eval_data, args.eval_seqlen, args.eval_tokens, args.zero_shot,
                         args.zero_shot_limit, progress=not args.quiet, device=args.device, dtype=args.dtype,
                         device_map=args.device_map, max_memory=args.max_memory, offload_folder=args.offload_folder,
                         bos=args.bos)
    if "perplexity" in out:
        p = out["perplexity"]
        print(f"perplexity {p['ppl']:.3f}  ({p['tokens']} tokens, seqlen {p['seqlen']}, {args.eval_data})")
    if "zero_shot" in out:
        from ..eval.zeroshot import format_zeroshot_table

        print(format_zeroshot_table(out["zero_shot"]))
    if args.json:
        io.write_json(Path(args.json), out)
    return 0
