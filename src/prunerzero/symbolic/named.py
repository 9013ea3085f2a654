"""Named pruning metrics written in the metric language, the saved :class:`Metric`, and loading.

A ``Metric`` is an expression plus the :class:`TerminalSpec` that says what W, X, G mean,
so a saved metric reproduces the same scores later.  Named metrics (defaults spec unless
noted; W = |w|, X = mean x^2 per input channel, G = 100 * l2 gradient norm):

* ``magnitude``   ``W``                                   (|w|)
* ``wanda``       ``W * sqrt(X)``                         (Sun et al. 2023: |w| * ||x||)
* ``gblm``        ``W * sqrt(X) + W * G``                 (GBLM-Pruner ``prune_gblm``: |w| *
  sqrt(scaler_row) + |w| * |grad|, grad = sqrt(sum_n (100 g_n)^2) = 100 * l2 norm)
* ``ria``         ``(coln(W) + rown(W)) * sqrt(sqrt(X))`` (RIA, Zhang et al. ICLR 2024:
  (|w|/colsum|w| + |w|/rowsum|w|) * sqrt(scaler_row)^a, a = 0.5; see ``ria_expr``)
* ``pruner-zero`` ``abs(W * W) * mms(G)``                 (the paper's ``data/best_tree.json``)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import UserError, clip, known_keys_only, path_kind, short
from ..registry import Registry
from .expr import MAX_DEPTH, MetricSyntaxError, Node, call, format_expr, from_json, parse, terminals_used, to_json, var
from .primitives import evaluate
from .terminals import TerminalSpec, prepare_terminals


@dataclass(frozen=True)
class Metric:
    """A formula with the meaning of its terminals; ``name`` is set for named metrics."""

    expr: Node
    spec: TerminalSpec = field(default_factory=TerminalSpec)
    name: str | None = None
    # Settings evolved together with the formula by the search (e.g. (("owl_lambda", 0.08),)):
    # not part of the formula, read by the fitness. Empty for every metric a user writes.
    genes: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return format_expr(self.expr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the formula text, the Pruner-Zero tree and the terminal spec."""
        return {"name": self.name, "formula": format_expr(self.expr), "tree": to_json(self.expr),
                "terminals": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, obj: Any) -> "Metric":
        obj = known_keys_only(obj, ("name", "formula", "tree", "terminals"), "saved metric")
        if obj.get("formula") is None and obj.get("tree") is None:
            raise UserError("saved metric needs a 'formula' or a 'tree'")
        expr = parse(obj["formula"]) if obj.get("formula") is not None else from_json(obj["tree"])
        if obj.get("formula") is not None and obj.get("tree") is not None and from_json(obj["tree"]) != expr:
            raise UserError(f"saved metric: 'formula' {clip(obj['formula'])} and 'tree' disagree")
        spec = TerminalSpec.from_dict(obj["terminals"]) if obj.get("terminals") is not None else TerminalSpec()
        name = obj.get("name")
        if name is not None and not isinstance(name, str):
            raise UserError(f"saved metric: 'name' must be a string, got {clip(name)}")
        return cls(expr, spec, name)

    def scores(self, weight: Tensor, x_mean_sq: Tensor | None = None, grad_l1: Tensor | None = None,
               grad_l2: Tensor | None = None, validate: bool = True) -> Tensor:
        """Scores (out, in) for one layer; raises InvalidMetricError (see ``evaluate``; ``validate=False``
        checks only nan / inf, for scoring the same linear again)."""
        used = terminals_used(self.expr)
        if "G" not in used:  # building G is a full pass over (out, in): skip it when the formula never reads it
            grad_l1 = grad_l2 = None
        if "X" not in used:
            x_mean_sq = None
        terms = prepare_terminals(self.spec, weight, x_mean_sq, grad_l1, grad_l2, needed=used)
        return evaluate(self.expr, terms, validate)


def degenerate_reason(metric: Metric) -> str | None:
    """Why ``metric`` cannot rank the weights of any layer, or None: it is constant, or ties
    decide most of its mask (``W / W``, ``log(0 * W)``), on a random layer whose W, X and G are
    all distinct. Checked before a model is loaded, so such a formula fails in a second. Reasons
    that depend on the data (nan, inf from large weights) are left to the real layers."""
    import torch

    from .primitives import InvalidMetricError

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 64, generator=gen)  # (out, in)
    x_mean_sq = torch.rand(64, generator=gen) + 0.1  # (in,)
    grad = torch.rand(16, 64, generator=gen) * 1e-3 + 1e-4  # (out, in)
    try:
        metric.scores(weight, x_mean_sq, grad, grad)
    except InvalidMetricError as exc:
        if exc.reason == "constant" or exc.reason.startswith("ties"):
            return exc.reason
    return None


def _power(base: Node, p: float) -> Node | None:
    """``base ** p`` (base >= 0) as products of nested sqrts, for dyadic p = k / 2^j, j <= 8."""
    whole, frac = int(p), p - int(p)
    factors = [base] * whole
    root = base
    for _ in range(8):
        root = call("sqrt", root)
        frac *= 2
        if frac >= 1:
            factors.append(root)
            frac -= 1
    if frac != 0:
        raise UserError(f"ria exponent must be a multiple of 1/256 (expressible with sqrt), got {2 * p}")
    if not factors:
        return None
    out = factors[0]
    for f in factors[1:]:
        out = call("mul", out, f)
    return out


def ria_expr(a: float = 0.5) -> Node:
    """RIA's score (|W|/colsum + |W|/rowsum) * sqrt(X)^a; X^(a/2) is built from sqrt and mul."""
    if not (math.isfinite(a) and 0 <= a <= 16):
        raise UserError(f"ria exponent must be in [0, 16], got {a}")
    relative = call("add", call("coln", var("W")), call("rown", var("W")))
    act = _power(var("X"), a / 2)
    return relative if act is None else call("mul", relative, act)


# Pruner-Zero's data/best_tree.json (github.com/pprp/Pruner-Zero), verbatim.
PRUNER_ZERO_BEST_TREE: dict[str, Any] = {
    "data": "mul",
    "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"}, "right": {"data": "W"}}},
    "right": {"data": "mms", "left": {"data": "G"}},
}

_REGISTRY: Registry[Metric] = Registry("metric")
for _name, _expr in {
    "magnitude": parse("W"),
    "wanda": parse("W * sqrt(X)"),
    "gblm": parse("W * sqrt(X) + W * G"),
    "ria": ria_expr(0.5),
    "pruner-zero": from_json(PRUNER_ZERO_BEST_TREE),
}.items():
    _REGISTRY.register(_name)(Metric(_expr, TerminalSpec(), _name))

NAMED_METRICS: tuple[str, ...] = tuple(_REGISTRY.names())
MAX_METRIC_FILE_BYTES = 1_000_000  # a metric is a formula; a bigger file is something else


def named_match(metric: Metric) -> str | None:
    """The named metric that prunes like ``metric`` (equal canonical keys, same meaning of the
    terminals), or None: a search that seeds the named metrics into its first generation can end
    with one of them on top, and must say so rather than call it found."""
    from .simplify import canonical_key

    if metric.spec != TerminalSpec():
        return None
    key = canonical_key(metric.expr, metric.spec)
    return next((name for name in NAMED_METRICS
                 if canonical_key(named_metric(name).expr, named_metric(name).spec) == key), None)


def named_metric(name: str) -> Metric:
    """A named metric; an unknown name raises UserError with the closest name."""
    return _REGISTRY.get(name)


def _read_text(path: Path) -> str:
    """The UTF-8 text of a metric file, or one clear error (a folder, random bytes, no access)."""
    kind = path_kind(path)
    if kind == "dir":
        raise UserError(f"metric file {short(path)} is a folder, not a .json or .txt file")
    if kind is None:
        raise UserError(f"metric file {short(path)} not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read metric file {short(path)}: {exc.strerror or exc}") from None
    if len(data) > MAX_METRIC_FILE_BYTES:
        raise UserError(f"metric file {short(path)} is {len(data)} bytes: not a metric "
                        f"(at most {MAX_METRIC_FILE_BYTES})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"metric file {short(path)} is not UTF-8 text (byte {exc.start}): not a metric file") from None


def _read_json(path: Path) -> Metric:
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise MetricSyntaxError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # json nests one Python frame per level
        raise MetricSyntaxError(f"JSON nested too deeply (a metric tree has depth at most {MAX_DEPTH})") from None
    if isinstance(obj, dict) and "data" in obj:
        return Metric(from_json(obj))
    return Metric.from_dict(obj)


def _read_file(path: Path) -> Metric:
    """A metric file: ``.json`` (a Pruner-Zero tree or a ``Metric.to_dict``), else a formula in text
    (``#`` lines are comments). Errors name the file."""
    try:
        if path.suffix.lower() == ".json":
            return _read_json(path)
        lines = [ln for ln in _read_text(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise MetricSyntaxError("the file holds no formula")
        return Metric(parse(" ".join(lines)))
    except MetricSyntaxError as exc:
        raise MetricSyntaxError(f"{short(path)}: {exc}") from None


def load_metric(text_or_path: str | Path, spec: TerminalSpec | None = None) -> Metric:
    """A metric from a named metric, a formula, a ``.json`` file (a Pruner-Zero tree or a
    ``Metric.to_dict``) or a ``.txt`` file holding a formula (``#`` lines are comments).
    ``spec`` overrides the terminal spec (a saved metric's own spec otherwise, else defaults)."""
    if not isinstance(text_or_path, (str, Path)):
        raise UserError(f"a metric must be a name, formula or file path, got {type(text_or_path).__name__}")
    if isinstance(text_or_path, Path) or str(text_or_path).strip().lower().endswith((".json", ".txt")):
        metric = _read_file(Path(str(text_or_path).strip()))
    elif text_or_path.strip() in _REGISTRY:
        metric = named_metric(text_or_path.strip())
    elif not text_or_path.strip():
        raise MetricSyntaxError("empty metric: pass a formula, a named metric or a metric file")
    else:
        try:
            metric = Metric(parse(text_or_path))
        except MetricSyntaxError:
            # Not a formula: a path without a .json/.txt suffix? Then say what it is rather than
            # reporting a syntax error in a file name. A formula always wins, so a file called "W"
            # in the current folder cannot shadow the formula W.
            kind = path_kind(text_or_path.strip())
            if kind == "dir":
                raise UserError(f"{short(text_or_path)} is a folder, not a metric formula or file") from None
            if kind is None:
                raise
            metric = _read_file(Path(text_or_path.strip()))
    return metric if spec is None else Metric(metric.expr, spec, metric.name)


def load_metric_file(path: str | Path) -> Metric:
    """``--metric-file``: always a path (never parsed as a formula), .json or text."""
    path = Path(str(path).strip())
    if not str(path).strip() or str(path) == ".":
        raise UserError("empty metric file name")
    return _read_file(path)
