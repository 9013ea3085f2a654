"""Metric expression trees: an immutable, hashable :class:`Node`, tree helpers, text and JSON forms.

Tree API (for the GP search)
----------------------------
* ``Node(op, children=(), value=None)`` -- frozen and hashable; validated on construction.
  Leaves are terminals (``op`` in ``"W" "X" "G"``) or constants (``op == "const"``,
  ``value`` a finite float); inner nodes have ``op`` in ``PRIMITIVES`` and exactly
  ``arity`` children.  Build with ``var("W")``, ``const(0.5)``, ``call("mul", a, b)``.
* A *path* is a tuple of child indices from the root: ``()`` is the root, ``(1, 0)`` the
  first child of the second child.  ``subtrees(e)`` yields ``(path, node)`` in preorder
  (root first); ``get_at(e, path)``; ``replace_at(e, path, new)`` returns a new tree
  (subtree crossover = ``replace_at(a, pa, get_at(b, pb))``).
* ``size(e)`` counts nodes; ``depth(e)`` counts edges on the longest root-leaf path (a
  leaf has depth 0); ``terminals_used(e)``; ``ops_used(e)`` counts primitives (not leaves).

Text form: infix with ``+ - * /`` (``/`` is protected elementwise ``pdiv``; ``div(a, b)``
is Pruner-Zero's ``a / ||b||_F``), unary minus, numbers, and ``name(args)`` for every
primitive, so the prefix form ``mul(abs(mul(W, W)), mms(G))`` parses too.
``format_expr`` prints the canonical form (minimal parentheses, left-associative), and
``parse(format_expr(e)) == e`` for every tree.  ``-2`` is the constant -2; ``neg(2)``
prints in call form so the two trees stay distinct.

JSON form: Pruner-Zero's ``{"data": op, "left": ..., "right": ...}``; a unary node has
only ``"left"``, a leaf only ``"data"`` (a constant's ``data`` is a number).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import UserError, clip
from .primitives import PRIMITIVES
from .terminals import TERMINALS

TreePath = tuple[int, ...]

# Limits on a formula read from a user or a file. Tree code (printing, simplify, canonical keys,
# evaluation, equality) recurses once per level, so a 300-term chain such as W*W*...*W would hit
# Python's recursion limit; no useful metric comes near these (the search's default is depth 6,
# size 25, and SearchConfig refuses limits above these).
MAX_DEPTH = 40
MAX_SIZE = 400
MAX_FORMULA_CHARS = 10_000


class MetricSyntaxError(UserError):
    """A metric formula or JSON tree that cannot be read; the message says where."""


@dataclass(frozen=True)
class Node:
    op: str
    children: tuple["Node", ...] = ()
    value: float | None = None

    def __post_init__(self) -> None:
        if self.op in TERMINALS or self.op == "const":
            if self.children:
                raise ValueError(f"leaf {self.op!r} cannot have children")
            if self.op == "const":
                v = self.value
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"constant must be a finite number, got {self.value!r}")
                object.__setattr__(self, "value", float(self.value))
            elif self.value is not None:
                raise ValueError(f"terminal {self.op!r} takes no value")
        elif self.op in PRIMITIVES:
            if len(self.children) != PRIMITIVES[self.op].arity or self.value is not None:
                raise ValueError(f"{self.op!r} takes {PRIMITIVES[self.op].arity} children and no value")
            if not all(isinstance(c, Node) for c in self.children):
                raise ValueError(f"children of {self.op!r} must be Nodes")
        else:
            raise ValueError(f"unknown op {self.op!r}")
        object.__setattr__(self, "_hash", hash((self.op, self.children, self.value)))

    def __hash__(self) -> int:  # cached: trees are hashed a lot by the search
        return self._hash  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return format_expr(self)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def is_const(self) -> bool:
        return self.op == "const"


def var(name: str) -> Node:
    return Node(name)


def const(value: float) -> Node:
    return Node("const", (), float(value))


def call(op: str, *children: Node) -> Node:
    return Node(op, tuple(children))


# ----------------------------------------------------------------------------- tree helpers
def subtrees(expr: Node) -> Iterator[tuple[TreePath, Node]]:
    """Every (path, subtree) in preorder, the root ``((), expr)`` first."""
    stack: list[tuple[TreePath, Node]] = [((), expr)]
    while stack:
        path, node = stack.pop()
        yield path, node
        for i in reversed(range(len(node.children))):
            stack.append((path + (i,), node.children[i]))


def get_at(expr: Node, path: TreePath) -> Node:
    for i in path:
        expr = expr.children[i]
    return expr


def replace_at(expr: Node, path: TreePath, new: Node) -> Node:
    """A copy of ``expr`` with the subtree at ``path`` replaced by ``new``."""
    if not path:
        return new
    i, rest = path[0], path[1:]
    kids = list(expr.children)
    kids[i] = replace_at(kids[i], rest, new)
    return Node(expr.op, tuple(kids), expr.value)


def size(expr: Node) -> int:
    return sum(1 for _ in subtrees(expr))


def depth(expr: Node) -> int:
    # Iterative, so that measuring a hostile tree cannot itself overflow the stack.
    deepest, stack = 0, [(expr, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in node.children)
    return deepest


def check_limits(expr: Node, where: str = "metric") -> None:
    """MetricSyntaxError if ``expr`` is deeper or larger than a formula may be (MAX_DEPTH, MAX_SIZE)."""
    d, n = depth(expr), size(expr)
    if d > MAX_DEPTH:
        raise MetricSyntaxError(f"{where} is nested too deeply (depth {d}; at most {MAX_DEPTH})")
    if n > MAX_SIZE:
        raise MetricSyntaxError(f"{where} is too large ({n} nodes; at most {MAX_SIZE})")


def terminals_used(expr: Node) -> frozenset[str]:
    return frozenset(n.op for _, n in subtrees(expr) if n.op in TERMINALS)


def ops_used(expr: Node) -> Counter[str]:
    return Counter(n.op for _, n in subtrees(expr) if n.op in PRIMITIVES)


# ----------------------------------------------------------------------------- printing
_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "pdiv": ("/", 2)}
_SYMBOL_OP = {"+": "add", "-": "sub", "*": "mul", "/": "pdiv"}


def _number(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def _fmt(e: Node) -> tuple[str, int]:
    """Text and precedence: 1 (+ -), 2 (* /), 3 (unary minus), 4 (atom)."""
    if e.op in TERMINALS:
        return e.op, 4
    if e.op == "const":
        s = _number(e.value)  # type: ignore[arg-type]
        return s, 3 if s.startswith("-") else 4
    if e.op == "neg" and not e.children[0].is_const:
        s, p = _fmt(e.children[0])
        return "-" + (s if p >= 3 else f"({s})"), 3
    if e.op in _INFIX:
        sym, p = _INFIX[e.op]
        (ls, lp), (rs, rp) = _fmt(e.children[0]), _fmt(e.children[1])
        ls = ls if lp >= p else f"({ls})"
        rs = rs if rp > p else f"({rs})"  # left-associative: a - (b - c) keeps its parentheses
        return f"{ls} {sym} {rs}", p
    return f"{e.op}({', '.join(_fmt(c)[0] for c in e.children)})", 4


def format_expr(expr: Node) -> str:
    """The canonical infix text of ``expr``; ``parse`` reads it back to an equal tree."""
    return _fmt(expr)[0]


# ----------------------------------------------------------------------------- parsing
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>[-+*/(),]))")


class _Parser:
    """Recursive descent over: expr := term (('+'|'-') term)*;  term := unary (('*'|'/') unary)*;
    unary := '-' unary | atom;  atom := NUMBER | TERMINAL | NAME '(' args ')' | '(' expr ')'."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[tuple[str, str, int]] = []  # (kind, text, position)
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or "op"
            self.toks.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.toks.append(("end", "", len(text)))
        self.i = 0

    def fail(self, pos: int, msg: str) -> None:
        raise MetricSyntaxError(f"metric syntax error at position {pos}: {msg} (in {clip(self.text)})")

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, sym: str, what: str) -> None:
        kind, s, pos = self.take()
        if s != sym or kind != "op":
            found = repr(s) if s else "end of input"
            self.fail(pos, f"expected {sym!r} {what}, found {found}")

    def expr(self) -> Node:
        node = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            node = Node(_SYMBOL_OP[self.take()[1]], (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            node = Node(_SYMBOL_OP[self.take()[1]], (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.peek()[:2] == ("op", "-"):
            self.take()
            if self.peek()[0] == "num":  # "-2" is the constant -2, not neg(2)
                return self.number(negative=True)
            return Node("neg", (self.unary(),))
        return self.atom()

    def number(self, negative: bool = False) -> Node:
        _, s, pos = self.take()
        value = float(s)
        if not math.isfinite(value):  # 1e400 reads as inf
            self.fail(pos, f"number {clip(s, 40)} is too large (not a finite float)")
        return const(-value if negative else value)

    def atom(self) -> Node:
        if self.peek()[0] == "num":
            return self.number()
        kind, s, pos = self.take()
        if kind == "name":
            if s in TERMINALS:
                return Node(s)
            if s not in PRIMITIVES:
                self.fail(pos, f"unknown name {clip(s, 40)} (terminals: {', '.join(TERMINALS)}; "
                               f"functions: {', '.join(PRIMITIVES)})")
            self.expect("(", f"after function {s!r}")
            args = [self.expr()]
            while self.peek()[:2] == ("op", ","):
                self.take()
                args.append(self.expr())
            self.expect(")", f"to close the arguments of {s!r}")
            if len(args) != PRIMITIVES[s].arity:
                self.fail(pos, f"{s!r} takes {PRIMITIVES[s].arity} argument(s), got {len(args)}")
            return Node(s, tuple(args))
        if s == "(":
            node = self.expr()
            self.expect(")", "to close '('")
            return node
        self.fail(pos, f"expected a number, terminal, function or '(', found {clip(s, 40)}" if s
                  else "unexpected end of input")
        raise AssertionError  # unreachable: fail() raises


def parse(text: str) -> Node:
    """Read a formula (infix or prefix calls); errors name the character position (0-based)."""
    if not isinstance(text, str):
        raise MetricSyntaxError(f"metric formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise MetricSyntaxError(f"metric formula is too long ({len(text)} characters; at most {MAX_FORMULA_CHARS})")
    p = _Parser(text)
    if p.peek()[0] == "end":
        p.fail(0, "empty formula")
    try:
        node = p.expr()
    except RecursionError:
        raise MetricSyntaxError(f"metric formula is nested too deeply (at most depth {MAX_DEPTH})") from None
    kind, s, pos = p.peek()
    if kind != "end":
        p.fail(pos, f"unexpected {clip(s, 40)} after a complete expression")
    check_limits(node, "metric formula")
    return node


# ----------------------------------------------------------------------------- JSON (Pruner-Zero)
def to_json(expr: Node) -> dict[str, Any]:
    """Pruner-Zero's tree dict: ``{"data": op, "left": ..., "right": ...}``."""
    if expr.is_const:
        return {"data": expr.value}
    out: dict[str, Any] = {"data": expr.op}
    for key, child in zip(("left", "right"), expr.children):
        out[key] = to_json(child)
    return out


def from_json(obj: Any, path: str = "$") -> Node:
    """Read a Pruner-Zero tree dict; errors name the JSON path of the bad node."""
    node = _from_json(obj, path, 0)
    check_limits(node, "metric tree")
    return node


def _from_json(obj: Any, path: str, level: int) -> Node:
    def bad(msg: str) -> MetricSyntaxError:
        return MetricSyntaxError(f"bad metric tree at {path}: {msg}")

    if level > MAX_DEPTH:
        raise MetricSyntaxError(f"metric tree is nested too deeply (at most depth {MAX_DEPTH})")

    if not isinstance(obj, dict):
        raise bad(f"expected an object with 'data', got {type(obj).__name__}")
    extra = sorted(set(obj) - {"data", "left", "right"})
    if extra:
        raise bad(f"unknown key(s) {', '.join(clip(k, 40) for k in extra[:5])}")
    if "data" not in obj:
        raise bad("missing 'data'")
    data = obj["data"]
    kids = [obj.get("left"), obj.get("right")]
    number = r"[-+]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    if isinstance(data, str) and len(data) < 400 and re.fullmatch(number, data.strip()):
        data = float(data)  # Pruner-Zero writes numeric leaves as strings
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        arity = 0
        try:
            data = float(data)  # a JSON integer may be too large for a float
        except OverflowError:
            data = math.inf
        if not math.isfinite(data):
            raise bad(f"constant {clip(obj['data'], 40)} is not a finite float")
    elif isinstance(data, str) and data in TERMINALS:
        arity = 0
    elif isinstance(data, str) and data in PRIMITIVES:
        arity = PRIMITIVES[data].arity
    else:
        raise bad(f"unknown op {clip(data, 40)} (terminals: {', '.join(TERMINALS)}; "
                  f"functions: {', '.join(PRIMITIVES)})")
    for j, key in enumerate(("left", "right")):
        if j < arity and kids[j] is None:
            raise bad(f"{data!r} needs a {key!r} child")
        if j >= arity and kids[j] is not None:
            raise bad(f"{data!r} takes {arity} child(ren) but has {key!r}")
    children = tuple(_from_json(kids[j], f"{path}.{key}", level + 1) for j, key in enumerate(("left", "right")[:arity]))
    if arity == 0 and not isinstance(data, str):
        return const(data)
    return Node(data, children)
