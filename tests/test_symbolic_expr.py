"""Expression trees: construction, tree helpers, text and JSON round trips, syntax errors."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunerzero.errors import UserError
from prunerzero.symbolic import (
    BINARY,
    PRUNER_ZERO_BEST_TREE,
    UNARY,
    MetricSyntaxError,
    Node,
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

# ----------------------------------------------------------------------------- random trees
NICE_CONSTS = [0.0, 1.0, -1.0, 2.0, 0.5, -3.0, 1e-3]


def leaves(any_floats: bool = True) -> st.SearchStrategy[Node]:
    nums = st.sampled_from(NICE_CONSTS)
    if any_floats:
        nums = st.one_of(nums, st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
    return st.one_of(st.sampled_from([var("W"), var("X"), var("G")]), nums.map(const))


def trees(any_floats: bool = True, max_leaves: int = 10, unary: tuple[str, ...] = UNARY,
          binary: tuple[str, ...] = BINARY) -> st.SearchStrategy[Node]:
    """Random well-formed trees over the given primitives (hypothesis shrinks them nicely)."""

    def extend(kids: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        return st.one_of(
            st.builds(lambda op, a: Node(op, (a,)), st.sampled_from(unary), kids),
            st.builds(lambda op, a, b: Node(op, (a, b)), st.sampled_from(binary), kids, kids),
        )

    return st.recursive(leaves(any_floats), extend, max_leaves=max_leaves)


FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- round trips
@FAST
@given(trees())
def test_parse_format_round_trip(e: Node) -> None:
    text = format_expr(e)
    assert parse(text) == e
    assert format_expr(parse(text)) == text


@FAST
@given(trees())
def test_json_round_trip(e: Node) -> None:
    obj = to_json(e)
    assert from_json(json.loads(json.dumps(obj))) == e


@FAST
@given(trees())
def test_prefix_form_parses_to_same_tree(e: Node) -> None:
    def prefix(n: Node) -> str:  # Pruner-Zero style: every op as a call
        if n.op == "const":
            return repr(n.value)
        if not n.children:
            return n.op
        return f"{n.op}({', '.join(prefix(c) for c in n.children)})"

    assert parse(prefix(e)) == e


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("mul(abs(mul(W, W)), mms(G))", "abs(W * W) * mms(G)"),
        ("(W*X)", "W * X"),
        ("W - (X - G)", "W - (X - G)"),
        ("(W - X) - G", "W - X - G"),
        ("W / X * G", "W / X * G"),
        ("W / (X * G)", "W / (X * G)"),
        ("-2 * W", "-2 * W"),
        ("neg(2) * W", "neg(2) * W"),
        ("-(2) * W", "neg(2) * W"),
        ("- W", "-W"),
        ("neg(neg(W))", "--W"),
        ("-(W + X)", "-(W + X)"),
        ("W - -1.5", "W - -1.5"),
        ("add(W, neg(X))", "W + -X"),
        ("1e-3 * W", "0.001 * W"),
        ("2.0 * W", "2 * W"),
        ("  sqrt ( X )*W ", "sqrt(X) * W"),
        ("div(W, X)", "div(W, X)"),
        ("pdiv(W, X)", "W / X"),
    ],
)
def test_canonical_printing(text: str, canonical: str) -> None:
    assert format_expr(parse(text)) == canonical


def test_infix_and_prefix_meanings() -> None:
    assert parse("W / X") == call("pdiv", var("W"), var("X"))
    assert parse("W + X * G") == call("add", var("W"), call("mul", var("X"), var("G")))
    assert parse("-W * X") == call("mul", call("neg", var("W")), var("X"))
    assert parse("-3") == const(-3.0)
    assert parse("--3") == call("neg", const(-3.0))


@pytest.mark.parametrize(
    "text, pos, fragment",
    [
        ("mul(W, G", 8, "expected ')'"),
        ("mul(W)", 0, "takes 2 argument"),
        ("abs(W, X)", 0, "takes 1 argument"),
        ("foo(W)", 0, "unknown name 'foo'"),
        ("w * X", 0, "unknown name 'w'"),
        ("W +", 3, "unexpected end"),
        ("W G", 2, "unexpected 'G'"),
        ("W * (X + G", 10, "expected ')'"),
        ("W ^ 2", 2, "unexpected character '^'"),
        ("abs W", 4, "expected '('"),
        ("", 0, "empty"),
        ("(", 1, "unexpected end"),
        ("W,X", 1, "unexpected ','"),
    ],
)
def test_syntax_errors_point_at_position(text: str, pos: int, fragment: str) -> None:
    with pytest.raises(MetricSyntaxError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith(f"metric syntax error at position {pos}:"), msg
    assert fragment in msg and "\n" not in msg
    assert isinstance(info.value, UserError)


def test_deep_nesting_is_a_syntax_error_not_a_crash() -> None:
    with pytest.raises(MetricSyntaxError):
        parse("(" * 5000 + "W" + ")" * 5000)


# ----------------------------------------------------------------------------- JSON specifics
def test_pruner_zero_best_tree() -> None:
    e = from_json(PRUNER_ZERO_BEST_TREE)
    assert format_expr(e) == "abs(W * W) * mms(G)"
    assert to_json(e) == PRUNER_ZERO_BEST_TREE  # unary nodes have only "left"


def test_json_accepts_pruner_zero_quirks() -> None:
    assert from_json({"data": "abs", "left": {"data": "W"}, "right": None}) == call("abs", var("W"))
    assert from_json({"data": "mul", "left": {"data": "2"}, "right": {"data": "W"}}) == parse("2 * W")
    assert to_json(parse("0.5 * W"))["left"] == {"data": 0.5}


@pytest.mark.parametrize(
    "obj, where",
    [
        ({"data": "mul", "left": {"data": "W"}}, "$:"),
        ({"data": "mul", "left": {"data": "W"}, "right": {"data": "Q"}}, "$.right:"),
        ({"data": "abs", "left": {"data": "sqrt", "left": {"data": "W"}, "right": {"data": "X"}}}, "$.left:"),
        ({"data": "W", "left": {"data": "X"}}, "$:"),
        ({"left": {"data": "X"}}, "$:"),
        ({"data": "abs", "left": [1]}, "$.left:"),
        ({"data": "W", "colour": "red"}, "$:"),
        ("W", "$:"),
        ({"data": True}, "$:"),
    ],
)
def test_bad_json_trees_name_the_node(obj: object, where: str) -> None:
    with pytest.raises(MetricSyntaxError) as info:
        from_json(obj)
    assert f"bad metric tree at {where}" in str(info.value)


# ----------------------------------------------------------------------------- tree helpers
def test_node_validation() -> None:
    for bad in (lambda: Node("mul", (var("W"),)), lambda: Node("frob"), lambda: Node("W", (var("X"),)),
                lambda: const(float("nan")), lambda: Node("const"), lambda: Node("abs", ("W",))):
        with pytest.raises(ValueError):
            bad()


def test_nodes_are_hashable_and_immutable() -> None:
    a, b = parse("abs(W * W) * mms(G)"), parse("mul(abs(mul(W, W)), mms(G))")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert const(0.0) == const(-0.0) and hash(const(0.0)) == hash(const(-0.0))
    with pytest.raises(AttributeError):
        a.op = "add"  # type: ignore[misc]


def test_tree_metrics() -> None:
    e = parse("abs(W * W) * mms(G) + 2")
    assert size(e) == 9 and depth(e) == 4 and depth(var("W")) == 0
    assert terminals_used(e) == frozenset({"W", "G"})
    assert ops_used(e) == {"add": 1, "mul": 2, "abs": 1, "mms": 1}
    paths = [p for p, _ in subtrees(e)]
    assert paths[0] == () and len(paths) == size(e) and len(set(paths)) == len(paths)
    assert get_at(e, (0, 1)) == parse("mms(G)")


@FAST
@given(trees(), trees())
def test_subtree_replace_is_crossover(a: Node, b: Node) -> None:
    for path, sub in subtrees(a):
        assert get_at(a, path) == sub
        assert replace_at(a, path, sub) == a
    path = list(subtrees(a))[-1][0]
    child = replace_at(a, path, b)
    assert get_at(child, path) == b
    assert size(child) == size(a) - size(get_at(a, path)) + size(b)
