"""The symbolic metric language of Pruner-Zero: trees over W, X, G and a fixed primitive set.

Parse a formula (``parse("abs(W * W) * mms(G)")``), build the terminal tensors for a layer
(``prepare_terminals``), score (``evaluate``), simplify and deduplicate (``simplify``,
``canonical_key``).  See ``expr`` for the tree API the GP search uses and docs/METRICS.md.
"""
from .expr import (
    MetricSyntaxError,
    Node,
    TreePath,
    call,
    const,
    depth,
    format_expr,
    from_json,
    get_at,
    ops_used,
    parse,
    replace_at,
    size,
    subtrees,
    terminals_used,
    to_json,
    var,
)
from .named import (NAMED_METRICS, PRUNER_ZERO_BEST_TREE, Metric, degenerate_reason, load_metric, load_metric_file,
                    named_match, named_metric, ria_expr)
from .primitives import (
    BINARY,
    EPS,
    PRIMITIVES,
    PRUNER_ZERO_OPS,
    UNARY,
    InvalidMetricError,
    Primitive,
    check,
    evaluate,
)
from .simplify import canonical_form, canonical_key, shape_of, sign_of, simplify
from .terminals import TERMINALS, TerminalSpec, prepare_terminals

__all__ = [
    "BINARY", "EPS", "NAMED_METRICS", "PRIMITIVES", "PRUNER_ZERO_BEST_TREE", "PRUNER_ZERO_OPS", "TERMINALS",
    "UNARY", "InvalidMetricError", "Metric", "MetricSyntaxError", "Node", "TreePath", "Primitive", "TerminalSpec",
    "call", "canonical_form", "canonical_key", "check", "const", "degenerate_reason", "depth", "evaluate",
    "format_expr", "from_json", "get_at", "load_metric", "load_metric_file", "named_match", "named_metric",
    "ops_used", "parse", "prepare_terminals", "replace_at", "ria_expr",
    "shape_of", "sign_of", "simplify", "size", "subtrees", "terminals_used", "to_json", "var",
]
