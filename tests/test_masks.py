"""Golden tests for the mask module: expected masks are written out by hand (True = removed).

Rules under test (masks.py): the lowest scores are pruned within each comparison group (an output
row, the whole layer, or each group of M consecutive inputs); among equal scores the LOWER INDEX
is pruned first (stable sort); a layer of `numel` weights loses exactly round_half_up(numel *
sparsity) weights, per-row shares come from cumulative rounding so the rows add up to that total.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from prunerzero import mask_kernels
from prunerzero.errors import UserError
from prunerzero.masks import (
    SparsityTarget,
    _prune_lowest_torch,
    make_mask,
    nm_lowest_by_column,
    nm_mask,
    parse_setting,
    parse_target,
    prune_lowest,
    prune_weight,
    ROW_BAND,
    banded_layer_mask,
    per_row_twin,
    row_counts,
    unstructured_mask,
    zero_masked,
)

pytestmark = pytest.mark.usefixtures("single_thread", "mask_code")


@pytest.fixture(params=["compiled", "torch"])
def mask_code(request, monkeypatch):
    """Every test of this file runs on the compiled kernels (mask_kernels) and on the torch code."""
    if request.param == "compiled" and not mask_kernels.available():
        pytest.skip("numba is not importable here")
    monkeypatch.setenv("PRUNERZERO_MASKS", request.param)
    return request.param

T, F = True, False


def mask_of(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def unstructured(s: float, group: str = "row") -> SparsityTarget:
    return parse_target(s, "unstructured", group)


# ----------------------------------------------------------------- unstructured, hand-computed

def test_per_row_50pct_2x4():
    score = torch.tensor([[0.4, 0.1, 0.3, 0.2],
                          [5.0, 7.0, 6.0, 8.0]])
    expected = mask_of([[F, T, F, T],   # 0.1 and 0.2 are the two lowest of row 0
                        [T, F, T, F]])  # 5 and 6 of row 1
    assert torch.equal(make_mask(score, unstructured(0.5)), expected)


def test_per_layer_50pct_2x4_compares_across_rows():
    score = torch.tensor([[0.4, 0.1, 0.3, 0.2],
                          [5.0, 7.0, 6.0, 8.0]])
    expected = mask_of([[T, T, T, T],   # the four lowest of the whole layer are all in row 0
                        [F, F, F, F]])
    assert torch.equal(make_mask(score, unstructured(0.5, "layer")), expected)


def test_band_bounds_each_rows_share_across_the_layer():
    """'band': the layer's lowest, but each row loses between floor((s - 0.1) C) and ceil((s + 0.1) C)."""
    score = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                          [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]])
    # across the layer, row 0 would lose all 10; with the band it loses at most ceil(0.6 * 10) = 6 and
    # row 1 at least floor(0.4 * 10) = 4: its 4 lowest.
    expected = mask_of([[T, T, T, T, T, T, F, F, F, F],
                        [T, T, T, T, F, F, F, F, F, F]])
    assert ROW_BAND == 0.1
    assert torch.equal(make_mask(score, unstructured(0.5, "band")), expected)
    assert torch.equal(make_mask(score, unstructured(0.5, "layer")), mask_of([[T] * 10, [F] * 10]))


def test_band_ties_by_position_and_its_limits():
    """Ties across rows go by position (row, then column), as everywhere; a band wide enough for any
    share is the layer's mask, a zero band with a whole per-row share is the row mask."""
    score = torch.tensor([[1.0, 0.0, 1.0, 1.0],
                          [1.0, 1.0, 0.0, 1.0],
                          [0.0, 1.0, 1.0, 1.0]])
    for band in (0.0, 0.25, 0.5, 1.0):
        got = banded_layer_mask(score, 0.5, band)
        assert torch.equal(got, _reference_band(score, "0.5", band)), band
    assert torch.equal(banded_layer_mask(score, 0.5, 1.0), make_mask(score, unstructured(0.5, "layer")))
    assert torch.equal(banded_layer_mask(score, 0.5, 0.0), make_mask(score, unstructured(0.5)))
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(16, 40, generator=gen).round()  # many ties
    assert torch.equal(banded_layer_mask(wide, 0.5, 1.0), make_mask(wide, unstructured(0.5, "layer")))
    assert torch.equal(banded_layer_mask(wide, 0.5, 0.0), make_mask(wide, unstructured(0.5)))
    shares = banded_layer_mask(wide, 0.5, 0.1).sum(1)
    assert int(shares.sum()) == 320 and int(shares.min()) >= 16 and int(shares.max()) <= 24


def test_band_settings_parse_and_have_a_per_row_twin():
    assert parse_setting("0.5:band") == SparsityTarget(0.5, group="band")
    assert parse_setting("0.5:unstructured:band") == SparsityTarget(0.5, group="band")
    assert per_row_twin("0.5:band") == "0.5" and per_row_twin("0.5:layer") == "0.5"
    assert per_row_twin("0.5") is None and per_row_twin("2:4") is None
    with pytest.raises(UserError, match="unstructured"):
        parse_setting("2:4:band")


def test_per_row_50pct_3x6_with_a_tie():
    score = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
                          [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                          [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]])
    expected = mask_of([[F, F, F, T, T, T],
                        [T, T, T, F, F, F],
                        [T, T, F, T, F, F]])  # 1, 1, then 3
    assert torch.equal(make_mask(score, unstructured(0.5)), expected)


def test_awkward_3x5_at_half_prunes_8_split_3_2_3():
    # 15 * 0.5 = 7.5 -> 8 (half rounds up). Cumulative bounds round(5*0.5, 10*0.5, 15*0.5) =
    # (3, 5, 8) -> rows prune 3, 2, 3.
    assert row_counts(3, 5, 0.5).tolist() == [3, 2, 3]
    score = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0],
                          [10.0, 6.0, 9.0, 7.0, 8.0],
                          [11.0, 15.0, 12.0, 14.0, 13.0]])
    expected = mask_of([[F, T, F, T, T],   # 1, 2, 3
                        [F, T, F, T, F],   # 6, 7
                        [T, F, T, F, T]])  # 11, 12, 13
    got = make_mask(score, unstructured(0.5))
    assert torch.equal(got, expected)
    assert int(got.sum()) == 8


def test_awkward_3x5_at_half_per_layer():
    score = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0],
                          [10.0, 6.0, 9.0, 7.0, 8.0],
                          [11.0, 15.0, 12.0, 14.0, 13.0]])
    expected = mask_of([[T, T, T, T, T],   # 1..5
                        [F, T, F, T, T],   # 6, 7, 8
                        [F, F, F, F, F]])
    assert torch.equal(make_mask(score, unstructured(0.5, "layer")), expected)


@pytest.mark.parametrize("rows, cols, sparsity, expected", [
    (3, 5, 0.5, [3, 2, 3]),          # bounds 2.5, 5, 7.5 -> 3, 5, 8
    (4, 3, 0.5, [2, 1, 2, 1]),       # bounds 1.5, 3, 4.5, 6 -> 2, 3, 5, 6
    (3, 4, 0.25, [1, 1, 1]),
    (5, 2, 0.3, [1, 0, 1, 0, 1]),    # bounds 0.6, 1.2, 1.8, 2.4, 3 -> 1, 1, 2, 2, 3
    (2, 7, 0.0, [0, 0]),
])
def test_row_counts_hand_computed(rows, cols, sparsity, expected):
    assert row_counts(rows, cols, sparsity).tolist() == expected


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (7, 3), (5, 11), (13, 17), (64, 100)])
@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.99])
def test_counts_add_up_exactly_for_awkward_sizes(rows, cols, sparsity):
    total = math.floor(Fraction(str(sparsity)) * rows * cols + Fraction(1, 2))
    counts = row_counts(rows, cols, sparsity)
    assert int(counts.sum()) == total
    lo, hi = math.floor(cols * sparsity), math.ceil(cols * sparsity)
    assert all(lo <= int(c) <= hi for c in counts)  # each row gets floor or ceil of its share
    score = torch.rand(rows, cols, generator=torch.Generator().manual_seed(rows * 100 + cols))
    for group in ("row", "layer", "band"):
        mask = make_mask(score, unstructured(sparsity, group))
        assert int(mask.sum()) == total, group
    assert torch.equal(make_mask(score, unstructured(sparsity)).sum(1), counts)


@pytest.mark.parametrize("numel, sparsity, expected", [
    (50, 0.29, 15),   # 14.5 exactly -> 15, but 50 * 0.29 == 14.499999999999998 in float64
    (90, 0.35, 32),   # 31.5 exactly -> 32, but 90 * 0.35 == 31.499999999999996
])
def test_half_counts_round_up_despite_float_error(numel, sparsity, expected):
    """The documented rule is round-half-up of numel * sparsity for the sparsity the user typed.
    Decimal sparsities are not exact in binary, so a plain float product can land just below .5."""
    assert math.floor(Fraction(str(sparsity)) * numel + Fraction(1, 2)) == expected
    assert int(row_counts(1, numel, sparsity).sum()) == expected
    score = torch.arange(numel, dtype=torch.float32).reshape(1, numel)
    assert int(make_mask(score, unstructured(sparsity)).sum()) == expected


def test_sparsity_zero_prunes_nothing():
    score = torch.randn(3, 8)
    for group in ("row", "layer", "band"):
        assert not make_mask(score, unstructured(0.0, group)).any()
        assert not unstructured_mask(score, 0.0, group).any()


# ----------------------------------------------------------------- N:M, hand-computed

def test_2_4_hand_computed():
    score = torch.tensor([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0],
                          [4.0, 1.0, 3.0, 2.0, 0.5, 0.25, 1.0, 0.75]])
    expected = mask_of([[T, T, F, F, F, F, T, T],
                        [F, T, F, T, T, T, F, F]])
    got = make_mask(score, parse_target(0.5, "2:4"))
    assert torch.equal(got, expected)
    assert torch.equal(nm_mask(score, 2, 4), expected)


def test_4_8_hand_computed_with_tie():
    score = torch.tensor([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0],
                          [4.0, 1.0, 3.0, 2.0, 0.5, 0.25, 1.0, 0.75]])
    # row 1: 0.25, 0.5, 0.75, then 1.0 appears at index 1 and 6 -> index 1 is pruned
    expected = mask_of([[T, T, T, T, F, F, F, F],
                        [F, T, F, F, T, T, F, T]])
    assert torch.equal(make_mask(score, parse_target(0.5, "4:8")), expected)


def test_1_4_hand_computed():
    score = torch.tensor([[3.0, 1.0, 2.0, 4.0, -1.0, 0.0, 5.0, 6.0]])
    expected = mask_of([[F, T, F, F, T, F, F, F]])
    assert torch.equal(make_mask(score, parse_target(0.25, "1:4")), expected)


# ----------------------------------------------------------------- ties

def test_all_equal_scores_prune_the_lowest_indices():
    score = torch.ones(2, 4)
    assert torch.equal(make_mask(score, unstructured(0.5)), mask_of([[T, T, F, F], [T, T, F, F]]))
    assert torch.equal(make_mask(score, unstructured(0.5, "layer")), mask_of([[T, T, T, T], [F, F, F, F]]))
    assert torch.equal(make_mask(torch.ones(1, 8), parse_target(0.5, "2:4")), mask_of([[T, T, F, F, T, T, F, F]]))
    assert torch.equal(make_mask(torch.ones(1, 8), parse_target(0.75, "6:8")), mask_of([[T, T, T, T, T, T, F, F]]))


def test_partial_ties_prune_the_lower_index_first():
    score = torch.tensor([[2.0, 1.0, 1.0, 1.0],
                          [0.0, 5.0, 0.0, 5.0]])
    # row 0: three 1s tie for the two slots -> indices 1 and 2. row 1: zeros at 0 and 2.
    assert torch.equal(make_mask(score, unstructured(0.5)), mask_of([[F, T, T, F], [T, F, T, F]]))
    score = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    assert torch.equal(make_mask(score, unstructured(0.5)), mask_of([[F, T, F, T, F, T]]))
    assert torch.equal(make_mask(score, unstructured(1 / 6)), mask_of([[F, T, F, F, F, F]]))


def test_masks_are_deterministic_on_quantised_scores():
    score = torch.randint(0, 3, (16, 32), generator=torch.Generator().manual_seed(0)).float()
    a = make_mask(score, unstructured(0.5))
    for _ in range(3):
        assert torch.equal(make_mask(score.clone(), unstructured(0.5)), a)


def test_prune_lowest_counts_per_row():
    score = torch.tensor([[3.0, 2.0, 1.0],
                          [1.0, 2.0, 3.0],
                          [1.0, 1.0, 1.0]])
    got = prune_lowest(score, torch.tensor([0, 2, 3]))
    assert torch.equal(got, mask_of([[F, F, F], [T, T, F], [T, T, T]]))


# ----------------------------------------------------------------- parse_target and errors

def test_parse_target_valid():
    t = parse_target(0.5)
    assert (t.sparsity, t.n, t.m, t.group, t.structured, t.pattern) == (0.5, 0, 0, "row", False, "unstructured")
    t = parse_target(0.5, "2:4")
    assert (t.n, t.m, t.structured, t.pattern) == (2, 4, True, "2:4")
    t = parse_target(0.5, "4:8", "layer")
    assert (t.n, t.m, t.group) == (4, 8, "layer")
    assert parse_target(0.0).sparsity == 0.0
    assert parse_target(0.3).with_sparsity(0.6) == SparsityTarget(0.6)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_a_user_error(sparsity):
    with pytest.raises(UserError):
        parse_target(sparsity)


@pytest.mark.parametrize("sparsity, pattern", [
    (0.6, "2:4"),     # 2:4 means 0.5
    (0.5, "5:4"),     # N > M
    (0.5, "4:4"),     # N == M
    (0.0, "0:4"),     # N == 0
    (0.5, "abc"),
    (0.5, "2:"),
    (0.5, "2-4"),
    (0.5, " 2:4"),
])
def test_bad_patterns_are_user_errors(sparsity, pattern):
    with pytest.raises(UserError):
        parse_target(sparsity, pattern)


def test_unknown_group_is_a_user_error():
    with pytest.raises(UserError):
        parse_target(0.5, group="column")
    with pytest.raises(UserError):
        unstructured_mask(torch.rand(2, 4), 0.5, group="column")


def test_nm_needs_width_divisible_by_m():
    with pytest.raises(UserError, match="divisible"):
        make_mask(torch.rand(2, 6), parse_target(0.5, "2:4"))
    with pytest.raises(UserError):
        make_mask(torch.rand(2, 12), parse_target(0.5, "4:8"))


def test_score_must_be_2d():
    with pytest.raises(ValueError):
        make_mask(torch.rand(8), parse_target(0.5))


# ----------------------------------------------------------------- random vs a slow reference loop

def _reference_row_counts(rows: int, cols: int, sparsity: str) -> list[int]:
    s = Fraction(sparsity)
    bounds = [math.floor(s * cols * r + Fraction(1, 2)) for r in range(rows + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _reference_lowest(values: list[float], k: int) -> set[int]:
    """Indices of the k lowest values; ties broken towards the lower index."""
    order = sorted(range(len(values)), key=lambda j: (values[j], j))
    return set(order[:k])


def _reference_mask(score: torch.Tensor, sparsity: str, pattern: str, group: str) -> torch.Tensor:
    rows, cols = score.shape
    s = score.tolist()
    out = [[False] * cols for _ in range(rows)]
    if pattern != "unstructured":
        n, m = map(int, pattern.split(":"))
        for r in range(rows):
            for g in range(0, cols, m):
                for j in _reference_lowest(s[r][g:g + m], n):
                    out[r][g + j] = True
    elif group == "row":
        for r, k in enumerate(_reference_row_counts(rows, cols, sparsity)):
            for j in _reference_lowest(s[r], k):
                out[r][j] = True
    elif group == "layer":
        k = math.floor(Fraction(sparsity) * rows * cols + Fraction(1, 2))
        flat = [v for row in s for v in row]
        for idx in _reference_lowest(flat, k):
            out[idx // cols][idx % cols] = True
    else:
        return _reference_band(score, sparsity, ROW_BAND)
    return torch.tensor(out)


def _reference_band(score: torch.Tensor, sparsity: str, band: float) -> torch.Tensor:
    """Greedy: every row first loses its lo lowest; then the layer's entries in (score, position) order
    are taken while their row has fewer than hi, until the layer has lost its count."""
    rows, cols = score.shape
    s = score.tolist()
    k = math.floor(Fraction(sparsity) * rows * cols + Fraction(1, 2))
    lo = max(0, math.floor((float(sparsity) - band) * cols + 1e-9))
    hi = min(cols, math.ceil((float(sparsity) + band) * cols - 1e-9))
    out = [[False] * cols for _ in range(rows)]
    for r in range(rows):
        for j in _reference_lowest(s[r], lo):
            out[r][j] = True
    taken = [lo] * rows
    left = k - rows * lo
    for idx in sorted(range(rows * cols), key=lambda i: (s[i // cols][i % cols], i)):
        r, j = divmod(idx, cols)
        if left == 0:
            break
        if not out[r][j] and taken[r] < hi:
            out[r][j], taken[r], left = True, taken[r] + 1, left - 1
    return torch.tensor(out)


@pytest.mark.parametrize("sparsity, pattern, group", [
    ("0.5", "unstructured", "row"),
    ("0.3", "unstructured", "row"),
    ("0.7", "unstructured", "layer"),
    ("0.5", "unstructured", "layer"),
    ("0.5", "unstructured", "band"),
    ("0.3", "unstructured", "band"),
    ("0.05", "unstructured", "band"),
    ("0.5", "2:4", "row"),
    ("0.5", "4:8", "row"),
    ("0.25", "1:4", "row"),
])
@pytest.mark.parametrize("quantised", [False, True])
def test_random_64x128_matches_slow_reference(sparsity, pattern, group, quantised):
    gen = torch.Generator().manual_seed(7)
    score = torch.randn(64, 128, generator=gen).abs()
    if quantised:  # many exact ties
        score = torch.round(score * 4) / 4
    got = make_mask(score, parse_target(float(sparsity), pattern, group))
    assert torch.equal(got, _reference_mask(score, sparsity, pattern, group))


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("levels", [3, 1000])
def test_nm_by_column_is_nm_mask_on_groups_laid_down_the_columns(n, m, levels):
    """SparseGPT's sweep holds one group per column (m, G): the same mask as nm_mask on (rows, m)
    groups: ties by position, and NaN handled by the very same comparisons."""
    g = torch.Generator().manual_seed(n * 100 + m + levels)
    score = torch.randint(0, levels, (12, 5 * m), generator=g).float()
    score[0, 1] = score[2, m] = score[2, m + 2] = float("nan")
    want = nm_mask(score, n, m)
    got = nm_lowest_by_column(score.reshape(-1, m).t(), n)  # (m, G)
    assert torch.equal(got.t().reshape(score.shape), want)
    out = torch.empty(m, score.numel() // m, dtype=torch.bool)
    assert nm_lowest_by_column(score.reshape(-1, m).t(), n, out=out) is out and torch.equal(out, got)


@pytest.mark.parametrize("seed", range(20))
def test_prune_lowest_equals_a_stable_sort_with_and_without_ties(seed):
    """The mask is what a stable ascending sort would pick (ties by position), whether a row holds its
    threshold once (the fast path) or many times (the running count), with equal or unequal counts."""
    from prunerzero.masks import prune_lowest

    g = torch.Generator().manual_seed(seed)
    rows, cols = 17, 40
    levels = [3, 1000][seed % 2]  # few distinct values: many ties; many: almost none
    score = torch.randint(0, levels, (rows, cols), generator=g).float()
    counts = torch.randint(0, cols + 1, (rows,), generator=g) if seed % 3 else torch.full((rows,), cols // 2)
    order = torch.sort(score, dim=-1, stable=True).indices
    want = torch.zeros_like(score, dtype=torch.bool)
    for r in range(rows):
        want[r, order[r, : int(counts[r])]] = True
    assert torch.equal(prune_lowest(score, counts), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_masked_is_masked_fill_to_the_bit(dtype):
    """The fast multiply gives masked_fill's weights exactly, +0.0 where removed (no -0.0), and
    writes into a strided `out` (GPT-2's Conv1D weights are transposed views) in place."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 48, generator=gen).to(dtype)
    weight[0, :4] = torch.tensor([-0.0, 0.0, -1.0, 1.0], dtype=dtype)
    mask = torch.rand(64, 48, generator=gen) < 0.5
    mask[0, :4] = torch.tensor([True, True, True, False])
    want = weight.masked_fill(mask, 0.0)
    got = zero_masked(weight, mask)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(torch.signbit(got), torch.signbit(want)), "a removed negative weight must be +0.0"
    storage = torch.empty(48, 64, dtype=dtype)
    out = storage.t()  # (64, 48), not contiguous
    assert zero_masked(weight, mask, out=out).data_ptr() == storage.data_ptr()
    assert torch.equal(storage.t(), want) and torch.equal(torch.signbit(storage.t()), torch.signbit(want))


# ----------------------------------------------------------------- compiled kernels vs the torch code

def _hard_scores(kind: str, rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """Scores that stress a selection: ties, heavy tails, signed zeros, infinities, NaN rows."""
    x = torch.randn(rows, cols, generator=g)
    if kind == "ties":
        return torch.randint(0, 3, (rows, cols), generator=g).float()
    if kind == "heavy":  # values spread over many orders of magnitude: bucketing must recurse
        return (x * 6).exp()
    if kind == "zeros":  # -0.0 and +0.0 compare equal: one tie group
        z = torch.where(x > 0, torch.zeros_like(x), -torch.zeros_like(x))
        return torch.where(x.abs() < 0.7, z, x)
    if kind == "inf":
        x[x > 1.5] = float("inf")
        x[x < -1.8] = float("-inf")
        return x
    if kind == "nan":
        x[::3, 1] = float("nan")
        return x
    if kind == "huge":  # max - min overflows to inf
        x[:, 0], x[:, 1] = 3e38, -3e38
        return x
    return x


@pytest.mark.parametrize("kind", ["plain", "ties", "heavy", "zeros", "inf", "nan", "huge"])
@pytest.mark.parametrize("cols", [7, 48, 49, 576, 1000])
def test_compiled_kernels_equal_the_torch_code(kind, cols, mask_code, monkeypatch):
    """prune_lowest, nm_mask and prune_weight give what the torch code gives, bit for bit: the masks,
    and the weights (+0.0 where removed, w + 0.0 where kept), for every kind of hard score row and
    for counts from none to all."""
    g = torch.Generator().manual_seed(cols * 10 + len(kind))
    rows = 37
    score = _hard_scores(kind, rows, cols, g)
    weight = torch.randn(rows, cols, generator=g)
    weight[:, :2] = -0.0
    # bf16 rounding: halfway cases to even (down, up, negative), the largest floats, a subnormal
    weight[2:9, 2] = torch.tensor([1.00390625, 1.01171875, -1.00390625, 1.0039063, 3.3e38, -3.3e38, 1e-40])
    counts = torch.randint(0, cols + 1, (rows,), generator=g)
    counts[0], counts[1] = 0, cols
    got = prune_lowest(score, counts)
    want = _prune_lowest_torch(score, counts)
    assert torch.equal(got, want)
    assert torch.equal(prune_lowest(score.reshape(1, -1), torch.tensor([score.numel() // 3])),
                       _prune_lowest_torch(score.reshape(1, -1), torch.tensor([score.numel() // 3])))
    targets = [parse_target(0.5), parse_target(0.3)]
    if cols % 4 == 0:
        targets += [parse_target(0.5, "2:4"), parse_target(0.25, "1:4")]
    if cols % 8 == 0:
        targets += [parse_target(0.5, "4:8")]
    for target in targets:
        got_w = prune_weight(weight, score, target)
        monkeypatch.setenv("PRUNERZERO_MASKS", "torch")
        want_mask = make_mask(score, target)
        want_w = zero_masked(weight, want_mask)
        monkeypatch.setenv("PRUNERZERO_MASKS", mask_code)
        assert torch.equal(make_mask(score, target), want_mask), target
        assert torch.equal(got_w, want_w) and torch.equal(got_w.signbit(), want_w.signbit()), target
        # Written as bfloat16 (the search's bf16 forwards): torch's rounding of the float32 result, bit for bit.
        half = prune_weight(weight, score, target, out=torch.empty(rows, cols, dtype=torch.bfloat16))
        assert torch.equal(half.view(torch.int16), want_w.bfloat16().view(torch.int16)), target


def test_prune_weight_writes_into_out_and_falls_back_where_the_kernels_do_not_apply():
    """prune_weight writes into `out` (the module's weight, in the search), and gives
    zero_masked(make_mask) for what the kernels do not take: bf16, a transposed (GPT-2 Conv1D) `out`,
    the per-layer group, sparsity 0."""
    g = torch.Generator().manual_seed(3)
    weight, score = torch.randn(24, 32, generator=g), torch.rand(24, 32, generator=g)
    for target in (parse_target(0.5), parse_target(0.5, "2:4"), parse_target(0.5, group="layer"), parse_target(0.0)):
        want = zero_masked(weight, make_mask(score, target))
        out = torch.full_like(weight, 7.0)
        assert prune_weight(weight, score, target, out=out) is out and torch.equal(out, want)
        storage = torch.empty(32, 24)
        assert torch.equal(prune_weight(weight, score, target, out=storage.t()), want) and torch.equal(storage.t(), want)
        half = prune_weight(weight.bfloat16(), score, target)
        assert half.dtype == torch.bfloat16 and torch.equal(half, zero_masked(weight.bfloat16(), make_mask(score, target)))
    with pytest.raises(UserError, match="divisible"):
        prune_weight(torch.randn(4, 6), torch.rand(4, 6), parse_target(0.5, "2:4"))


def test_kernels_take_tensors_that_require_grad(mask_code):
    """A weight or score that requires grad (a Parameter, outside no_grad) goes through the same code:
    numpy() would refuse it, the kernels read its storage."""
    g = torch.Generator().manual_seed(5)
    weight = torch.nn.Parameter(torch.randn(8, 16, generator=g))
    score = torch.rand(8, 16, generator=g).requires_grad_()
    for target in (parse_target(0.5), parse_target(0.5, "2:4")):
        want = zero_masked(weight.detach(), make_mask(score.detach(), target))
        assert torch.equal(prune_weight(weight, score, target).detach(), want)
        if mask_code == "compiled":  # torch refuses out= when an input requires grad; the kernels write it
            out = torch.empty(8, 16)
            assert prune_weight(weight, score, target, out=out) is out and torch.equal(out, want)
        assert torch.equal(make_mask(score, target), make_mask(score.detach(), target))
