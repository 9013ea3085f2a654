"""`prunerzero` command line: each subcommand is a thin wrapper over the library API.

Bad input exits with code 2 and one line on stderr; heavy imports happen inside the commands so
`prunerzero --help` is instant.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from .cli_analysis import register as register_analysis
from .cli_search import register as register_search
from .errors import UserError, clip, nonempty, one_line, short
from .windows import BOS_HELP, BOS_MODES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {clip(text, 40)}") from None


def _none_or_text(text: str) -> str | None:
    return None if text.lower() == "none" else nonempty(text)


def _tasks(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _add_placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=nonempty, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", type=nonempty, default="float32", help="weights as loaded: float32, bfloat16 or float16")
    p.add_argument("--device-map", type=nonempty, default="none",
                   help="none (one --device), or auto / balanced / sequential: accelerate spreads the layers over GPUs")
    p.add_argument("--max-memory", type=nonempty,
                   help='with --device-map: memory per device, e.g. "0=70GiB,1=70GiB,cpu=200GiB"')
    p.add_argument("--offload-folder", type=_none_or_text,
                   help="with --device-map: folder for layers that fit on no device (offloaded to disk)")


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=nonempty, metavar="FILE.json",
                   help="settings from a JSON file (keys: the prune options with _ for -); options given here win")
    p.add_argument("--model", type=nonempty, default="smollm2-135m",
                   help="local HF folder, hub id, .gguf file, or smollm2-135m")
    p.add_argument("--method", type=nonempty, default="wanda",
                   help="magnitude, wanda, sparsegpt, gblm, ria, pruner-zero")
    p.add_argument("--metric", type=nonempty, help='a formula such as "abs(W*W) * mms(G)" (overrides --method)')
    p.add_argument("--metric-file", type=nonempty, help="a metric saved as .json (Pruner-Zero tree or ours) or .txt")
    p.add_argument("--sparsity", type=_float, default=0.5)
    p.add_argument("--pattern", type=nonempty, default="unstructured", help="unstructured, 2:4, 4:8, ...")
    p.add_argument("--group", type=nonempty, default="row",
                   help="comparison group for unstructured sparsity: row or layer")
    p.add_argument("--calib-data", type=nonempty, default="general",
                   help="general (default: a mix of fiction, Wikipedia, news and stories, science), lambada (fiction), "
                        "squad (Wikipedia paragraphs), c4, wikitext2 (train), or a text file")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512, help="calibration window (and eval window by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bos", default="auto", choices=BOS_MODES, help=BOS_HELP)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--within-layer", type=nonempty, default="auto",
                   help="sequential, parallel (reference order) or auto")
    _add_placement_args(p)
    p.add_argument("--calib-dtype", type=nonempty, default="float32",
                   help="float32 or bfloat16 (autocast calibration forwards)")
    p.add_argument("--percdamp", type=_float, default=0.01, help="SparseGPT damping, relative to mean diag(H)")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block")
    p.add_argument("--gradients", type=nonempty,
                   help="precomputed gradient file (else computed and cached when G is used)")
    p.add_argument("--grad-chunk-layers", type=int, default=None,
                   help="compute G for N decoder layers at a time on their GPUs (default: all at once, sums on the CPU)")
    p.add_argument("--prune-head", action="store_true",
                   help="also prune the output head (lm_head); with tied embeddings that prunes the input embeddings too")
    p.add_argument("--reconstruct", default="none", choices=("none", "obs", "admm"),
                   help="after the mask, update the surviving weights: obs (SparseGPT's OBS update) or admm "
                        "(the weights with the least layer output error for exactly that mask)")
    p.add_argument("--reconstruct-mode", default="fixed", choices=("fixed", "block"),
                   help="fixed: the metric's whole mask first; block: mask chosen per column block as the update runs")
    p.add_argument("--admm-iters", type=int, default=10, help="--reconstruct admm: ADMM iterations")
    p.add_argument("--cg-iters", type=int, default=20, help="--reconstruct admm: conjugate-gradient steps after ADMM")
    p.add_argument("--allocation", default="uniform", choices=("uniform", "owl"),
                   help="layer-wise sparsity: uniform, or owl (outlier-weighted, unstructured only)")
    p.add_argument("--owl-m", type=_float, default=5.0, help="OWL outlier threshold M (scores above M x mean)")
    p.add_argument("--owl-lambda", type=_float, default=0.08, help="OWL spread: layer sparsity within target +- lambda")


def _add_eval_args(p: argparse.ArgumentParser, default_data: str | None = "wikitext2") -> None:
    p.add_argument("--eval-data", default=default_data, type=_none_or_text,
                   help="wikitext2, c4, ptb, lambada, squad (their search splits), a text file, or none (skip perplexity)")
    p.add_argument("--eval-seqlen", type=int, default=None)
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate only the first N test tokens")
    p.add_argument("--zero-shot", type=_tasks, default=(), help="comma list: boolq,rte,hellaswag,winogrande,...")
    p.add_argument("--zero-shot-limit", type=int, default=None, help="examples per zero-shot task")


def prune_config(args: argparse.Namespace):
    """The PruneConfig of parsed `prune` arguments (a --config file's values are their defaults)."""
    from dataclasses import fields

    from .config import PruneConfig

    if args.metric is not None and args.metric_file is not None:
        raise UserError("pass either --metric or --metric-file, not both")
    if args.metric_file is not None:
        # Always a path: check it now, so a folder or a file name without .json/.txt is not read as
        # a formula (and a bad file fails before the model loads).
        from .symbolic import load_metric_file

        load_metric_file(args.metric_file)
        if not args.metric_file.strip().lower().endswith((".json", ".txt")):
            raise UserError(f"--metric-file {short(args.metric_file)}: name a .json or .txt file")
    values = {f.name: getattr(args, f.name) for f in fields(PruneConfig)}
    chosen = args.metric if args.metric is not None else args.metric_file
    values["metric"] = chosen if chosen is not None else getattr(args, "metric_from_config", None)
    values["zero_shot"] = tuple(values["zero_shot"] or ())
    return PruneConfig(**values)


def cmd_prune(args: argparse.Namespace) -> int:
    from .api import prune, validate
    from .report import print_prune_summary

    cfg = prune_config(args)
    if args.dry_run:
        validate(cfg)
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    results = prune(cfg, progress=not args.quiet)
    print_prune_summary(results)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import io
    from .api import evaluate_model

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
        from .eval.zeroshot import format_zeroshot_table

        print(format_zeroshot_table(out["zero_shot"]))
    if args.json:
        io.write_json(Path(args.json), out)
    return 0


def cmd_metric_show(args: argparse.Namespace) -> int:
    from .symbolic import canonical_key, depth, format_expr, load_metric, simplify, size, terminals_used

    metric = load_metric(args.formula)
    e = metric.expr
    print(f"formula:    {format_expr(e)}")
    print(f"prefix:     {_prefix(e)}")
    print(f"simplified: {format_expr(simplify(e, metric.spec))}")
    print(f"key:        {canonical_key(e, metric.spec)}")
    print(f"terminals:  {', '.join(sorted(terminals_used(e))) or '-'}   {json.dumps(metric.spec.to_dict())}")
    print(f"size {size(e)}, depth {depth(e)}")
    print("tree:")
    print(json.dumps(metric.to_dict()["tree"], indent=2))
    return 0


def _prefix(node: Any) -> str:
    if not node.children:
        return node.op if node.value is None else repr(node.value)
    return f"{node.op}({', '.join(_prefix(c) for c in node.children)})"


def cmd_metric_convert(args: argparse.Namespace) -> int:
    from . import io
    from .symbolic import format_expr, load_metric, to_json

    if args.output:
        io.check_writable_file(args.output, "-o")
    metric = load_metric(args.source)
    if args.to == "json":
        text = json.dumps(to_json(metric.expr), indent=2) + "\n"
    elif args.to == "metric-json":
        text = json.dumps(metric.to_dict(), indent=2) + "\n"
    else:
        text = format_expr(metric.expr) + "\n"
    if args.output:
        io.write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunerzero", description="Post-training pruning of causal LMs and the Pruner-Zero metric search")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model and measure it")
    _add_prune_args(p)
    _add_eval_args(p)
    p.add_argument("--save", type=nonempty, help="folder for results.json (and the model with --save-model)")
    p.add_argument("--save-model", action="store_true", help="also save a Hugging Face checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --save")
    p.add_argument("--skip-dense", action="store_true", help="do not measure the dense model")
    p.add_argument("--dry-run", action="store_true", help="check every setting, print the effective config, load nothing")
    p.set_defaults(func=cmd_prune)
    parser.prune_parser = p  # type: ignore[attr-defined]  # --config sets its defaults

    p = sub.add_parser("eval", help="perplexity / zero-shot accuracy of any model")
    p.add_argument("--model", required=True, type=nonempty)
    _add_placement_args(p)
    _add_eval_args(p)
    p.add_argument("--bos", default="auto", choices=BOS_MODES, help=BOS_HELP)
    p.add_argument("--json", type=nonempty, help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_eval)

    metric = sub.add_parser("metric", help="inspect and convert symbolic metrics")
    msub = metric.add_subparsers(dest="metric_command", required=True, parser_class=_Parser)
    p = msub.add_parser("show", help="tree, simplified form and canonical key of a formula")
    p.add_argument("formula", type=nonempty, help="a formula, a named metric, or a .json/.txt file")
    p.set_defaults(func=cmd_metric_show)
    p = msub.add_parser("convert", help="between the string form and Pruner-Zero's JSON tree")
    p.add_argument("source", type=nonempty, help="a formula, or a .json/.txt file")
    p.add_argument("--to", choices=("json", "text", "metric-json"), default="json")
    p.add_argument("-o", "--output", type=nonempty)
    p.set_defaults(func=cmd_metric_convert)

    register_search(sub)
    register_analysis(sub)
    return parser


def _with_config_file(parser: argparse.ArgumentParser, argv: list[str] | None,
                      args: argparse.Namespace) -> argparse.Namespace:
    """`prune --config FILE.json`: the file's values become the defaults, then the command line is
    parsed again, so options given on it win over the file."""
    if getattr(args, "command", None) != "prune" or not args.config:
        return args
    from .config import read_config_file

    values = read_config_file(args.config)
    if "metric" in values:  # kept apart, so that --metric or --metric-file on the command line wins
        values["metric_from_config"] = values.pop("metric")
    parser.prune_parser.set_defaults(**values)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if getattr(args, "quiet", False):
        _no_library_bars()
    try:
        args = _with_config_file(parser, argv, args)
        handler: Callable[[argparse.Namespace], int] = args.func
        return handler(args)
    except UserError as exc:
        print(f"prunerzero: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        print(f"prunerzero: error: file name too long: {clip(exc.filename, 60)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunerzero: interrupted", file=sys.stderr)
        return 130


def _no_library_bars() -> None:
    """--quiet: libraries' own bars (transformers' GGUF conversion uses plain tqdm) default to off.
    Our bars pass `disable=` explicitly, and call-time keywords override a partialmethod's."""
    from functools import partialmethod

    from tqdm import tqdm

    tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # type: ignore[method-assign]


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) would bury our own progress bars."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
