"""`prunerzero metric show | convert`: inspect a formula, convert between the string form and
Pruner-Zero's JSON tree."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .options import Parser, nonempty


def register(sub: argparse._SubParsersAction) -> None:
    metric = sub.add_parser("metric", help="inspect and convert symbolic metrics")
    msub = metric.add_subparsers(dest="metric_command", required=True, parser_class=Parser)
    p = msub.add_parser("show", help="tree, simplified form and canonical key of a formula")
    p.add_argument("formula", type=nonempty, help="a formula, a named metric, or a .json/.txt file")
    p.set_defaults(func=cmd_metric_show)
    p = msub.add_parser("convert", help="between the string form and Pruner-Zero's JSON tree")
    p.add_argument("source", type=nonempty, help="a formula, or a .json/.txt file")
    p.add_argument("--to", choices=("json", "text", "metric-json"), default="json")
    p.add_argument("-o", "--output", type=nonempty)
    p.set_defaults(func=cmd_metric_convert)


def cmd_metric_show(args: argparse.Namespace) -> int:
    from ..symbolic import canonical_key, depth, format_expr, load_metric, simplify, size, terminals_used

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
    from .. import io
    from ..symbolic import format_expr, load_metric, to_json

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
