"""Pruning methods on hand-made tensors and small random layers.

Wanda is checked against |W| * ||X||_2 computed from explicit activations; the statistics
collector against sums written out by hand; SparseGPT/OBS against the layer reconstruction error
||X W^T - X W'^T||_F of the simpler metrics, and for exact sparsity and pattern.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunerzero.calib.stats import (
    GRAM_MIN_WIDTH, SUM_SQ_COLUMNS, StatsCollector, collect_input_stats, gram, sum_of_squares,
)
from prunerzero.errors import UserError
from prunerzero.masks import make_mask, parse_target
from prunerzero.methods import METHODS, get_method
from prunerzero.methods import obs, obs_sweep
from prunerzero.methods.obs import FactorMemo, inverse_hessian_factor, obs_prune
from prunerzero.methods.wanda import wanda_score

pytestmark = pytest.mark.usefixtures("single_thread")

T, F = True, False
HAND_X = torch.tensor([[1.0, 0.0, 0.0, 4.0],
                       [2.0, 1.0, 0.0, 0.0],
                       [2.0, 0.0, 2.0, 0.0]])  # (tokens=3, in=4): column norms ||X_j||_2 = 3, 1, 2, 4
HAND_NORMS = torch.tensor([3.0, 1.0, 2.0, 4.0])
HAND_W = torch.tensor([[0.5, 4.0, 3.0, 1.25],
                       [-1.0, -6.0, 0.25, -0.5]])  # (out=2, in=4)


def _linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def _hand_stats(needs=frozenset({"X", "H"})):
    lin = _linear(HAND_W)
    with collect_input_stats({"lin": lin}, needs) as col:
        lin(HAND_X[:2].reshape(1, 2, 4))  # two batches of different shapes: (1, 2, 4) then (1, 4)
        lin(HAND_X[2:])
    return col


# ----------------------------------------------------------------- statistics and Wanda by hand

def test_collected_x_is_mean_square_per_input_channel():
    col = _hand_stats()
    stats = col.stats("lin")
    assert col.accumulators["lin"].tokens == 3
    # x_mean_sq * tokens == ||X_j||_2^2 = 9, 1, 4, 16
    torch.testing.assert_close(stats.x_mean_sq * 3, HAND_NORMS ** 2)
    torch.testing.assert_close(stats.hessian, HAND_X.t() @ HAND_X / 3)


def test_wanda_score_is_abs_w_times_input_norm():
    stats = _hand_stats(frozenset({"X"})).stats("lin")
    assert stats.hessian is None  # only what was asked for
    # |W| * ||X||_2 by hand: row 0 -> [1.5, 4, 6, 5], row 1 -> [3, 6, 0.5, 2]
    by_hand = torch.tensor([[1.5, 4.0, 6.0, 5.0],
                            [3.0, 6.0, 0.5, 2.0]])
    torch.testing.assert_close(wanda_score(HAND_W, stats) * math.sqrt(3), by_hand)  # up to sqrt(tokens)


def test_wanda_mask_by_hand_differs_from_magnitude():
    stats = _hand_stats(frozenset({"X"})).stats("lin")
    target = parse_target(0.5)
    wanda = get_method("wanda").prune(HAND_W.clone(), stats, target)
    magnitude = get_method("magnitude").prune(HAND_W.clone(), stats, target)
    # scores row 0 [1.5, 4, 6, 5] -> drop 0, 1; row 1 [3, 6, 0.5, 2] -> drop 2, 3
    wanda_mask = torch.tensor([[T, T, F, F], [F, F, T, T]])
    # |W| row 0 [0.5, 4, 3, 1.25] -> drop 0, 3; row 1 [1, 6, 0.25, 0.5] -> drop 2, 3
    magnitude_mask = torch.tensor([[T, F, F, T], [F, F, T, T]])
    assert torch.equal(wanda == 0, wanda_mask)
    assert torch.equal(magnitude == 0, magnitude_mask)
    torch.testing.assert_close(wanda, HAND_W.masked_fill(wanda_mask, 0.0))  # kept weights unchanged
    # one group of 4 per row: 2:4 is the same choice here
    assert torch.equal(get_method("wanda").prune(HAND_W.clone(), stats, parse_target(0.5, "2:4")) == 0, wanda_mask)


# ----------------------------------------------------------------- StatsCollector sharing

class _TwoHeads(nn.Module):
    """q and k read the same tensor; v reads an equal-valued copy; o reads q's output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(4, 2), nn.Linear(3, 2)

    def forward(self, x):
        h = x * 1.0  # a fresh tensor each call
        q = self.q(h)
        self.k(h)
        self.v(h.clone())
        return self.o(q)


def test_linears_fed_the_same_tensor_share_one_accumulator():
    model = _TwoHeads()
    xs = [torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    linears = {"q": model.q, "k": model.k, "v": model.v, "o": model.o}
    with collect_input_stats(linears, frozenset({"X", "H"})) as col:
        with torch.no_grad():
            for x in xs:
                model(x)
    acc = col.accumulators
    assert acc["q"] is acc["k"]
    assert acc["v"] is not acc["q"] and acc["o"] is not acc["q"]
    assert len({id(a) for a in acc.values()}) == 3
    assert acc["q"].tokens == 30  # counted once, not twice

    x = torch.cat([x.reshape(-1, 4) for x in xs])  # (30, 4)
    with torch.no_grad():
        q_out = torch.cat([model.q(x_.reshape(-1, 4)) for x_ in xs])  # o's input, (30, 3)
    for name, inp in (("q", x), ("k", x), ("v", x), ("o", q_out)):
        s = col.stats(name)
        torch.testing.assert_close(s.x_mean_sq, inp.pow(2).mean(0))
        torch.testing.assert_close(s.hessian, inp.t() @ inp / inp.shape[0])
    assert col.stats("missing").x_mean_sq is None
    # siblings get the very same X and H (SparseGPT factorises a shared H once), each its own stats
    # object (G is attached per linear), and an update after finalize is not hidden by the memo
    q, k = col.stats("q"), col.stats("k")
    assert q.hessian is k.hessian and q.x_mean_sq is k.x_mean_sq and q is not k
    acc["q"].update(torch.ones(2, 4))
    assert col.stats("q").hessian is not q.hessian and acc["q"].tokens == 32
    # hooks are gone after the context
    assert not model.q._forward_hooks and not model.o._forward_hooks


def test_no_needs_means_no_hooks_and_empty_stats():
    model = _TwoHeads()
    with collect_input_stats({"q": model.q}, frozenset()) as col:
        assert not model.q._forward_hooks
        model(torch.randn(1, 2, 4))
    assert col.stats("q").x_mean_sq is None and col.stats("q").hessian is None


def test_collector_does_not_confuse_tensors_with_reused_ids():
    """A freed tensor's id can be reused by a new tensor; sharing must follow identity."""
    col = StatsCollector(frozenset({"X"}))
    col.observe("a", torch.ones(2, 4))  # the temporary may be freed right away...
    col.observe("b", torch.full((2, 4), 2.0))  # ...and this one may get its id
    assert col.accumulators["a"] is not col.accumulators["b"]
    torch.testing.assert_close(col.stats("b").x_mean_sq, torch.full((4,), 4.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [7, SUM_SQ_COLUMNS, 3 * SUM_SQ_COLUMNS + 64, 1536])
def test_sum_of_squares_by_column_slices_equals_the_whole_tensor_reduction(width, dtype):
    """X summed a slice of columns at a time (no full-size temporary) is what the whole-tensor
    float32 reduction gives, so masks do not move."""
    gen = torch.Generator().manual_seed(width)
    x = (torch.randn(4096, width, generator=gen) * torch.rand(width, generator=gen) * 3).to(dtype)
    got = sum_of_squares(x)
    assert got.dtype == torch.float32 and got.shape == (width,)
    assert torch.equal(got, x.float().pow(2).sum(0))  # to the last bit
    assert torch.equal(sum_of_squares(x.t().contiguous().t()), got)  # a column-major input too


def test_collector_keeps_no_earlier_input_alive():
    """Holding every linear's input until the layer ended cost ~200 MB per layer at 16k tokens:
    once a linear with another input has been observed, the earlier input may be freed."""
    import weakref

    col = StatsCollector(frozenset({"X"}))
    first = torch.ones(3, 4)
    ref = weakref.ref(first)
    col.observe("q", first)
    col.observe("k", first)  # a sibling: the same tensor, one accumulator
    assert col.accumulators["q"] is col.accumulators["k"]
    col.observe("o", torch.full((3, 4), 2.0))
    del first
    assert ref() is None
    torch.testing.assert_close(col.stats("k").x_mean_sq, torch.ones(4))


# ----------------------------------------------------------------- SparseGPT vs metrics

def _random_layer(out: int = 64, inp: int = 128, tokens: int = 1024, seed: int = 0):
    """W (out, in) and X (tokens, in) with correlated channels and a few large-magnitude outliers."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen)
    mix = torch.eye(inp) + 0.5 * torch.randn(inp, inp, generator=gen) / math.sqrt(inp)
    x = torch.randn(tokens, inp, generator=gen) @ mix
    scale = torch.ones(inp)
    scale[torch.randperm(inp, generator=gen)[:8]] = 20.0  # outlier channels (as in LLMs)
    return w, x * scale


def _stats_for(w: torch.Tensor, x: torch.Tensor, needs=frozenset({"X", "H"})):
    lin = _linear(w)
    with collect_input_stats({"lin": lin}, needs) as col, torch.no_grad():
        for chunk in x.split(256):  # several calibration batches
            lin(chunk.reshape(2, -1, x.shape[1]))
    return col.stats("lin")


def _recon_error(w: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ w.t() - x @ w_new.t()))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    w, x = _random_layer()
    stats = _stats_for(w, x)
    target = parse_target(0.5, pattern)
    new = {name: get_method(name).prune(w.clone(), stats, target) for name in ("magnitude", "wanda", "sparsegpt")}
    err = {name: _recon_error(w, wn, x) for name, wn in new.items()}
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err
    for name, wn in new.items():
        zeros = wn == 0
        assert int(zeros.sum()) == w.numel() // 2, name
        if pattern == "2:4":
            assert torch.equal(zeros.reshape(-1, 4).sum(1), torch.full((w.numel() // 4,), 2)), name
    # the weights SparseGPT keeps are updated, not just copied
    kept = new["sparsegpt"] != 0
    assert not torch.allclose(new["sparsegpt"][kept], w[kept])


@pytest.mark.parametrize("shape, blocksize, sparsity", [
    ((7, 30), 8, 0.4),      # partial last block, 84 zeros
    ((10, 100), 32, 0.3),   # 300 zeros
    ((5, 13), 128, 0.5),    # block wider than the layer; 32.5 -> 33
    ((64, 128), 128, 0.7),
])
def test_obs_unstructured_reaches_exact_count(shape, blocksize, sparsity):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=gen)
    x = torch.randn(4 * shape[1], shape[1], generator=gen)
    h = x.t() @ x / x.shape[0]
    out = obs_prune(w, h, parse_target(sparsity), blocksize=blocksize)
    assert int((out == 0).sum()) == math.floor(w.numel() * sparsity + 0.5)
    assert out.dtype == torch.float32 and out.shape == w.shape


@pytest.mark.parametrize("blocksize", [16, 7, 128])
def test_obs_with_fixed_mask_keeps_exactly_that_mask(blocksize):
    w, x = _random_layer(out=16, inp=40, tokens=256, seed=3)
    h = x.t() @ x / x.shape[0]
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(4)) < 0.4  # any count at all
    out = obs_prune(w, h, parse_target(0.5), blocksize=blocksize, fixed_mask=mask)
    assert torch.equal(out == 0, mask)
    # reconstruction beats zeroing the same weights and leaving the rest alone
    assert _recon_error(w, out, x) < _recon_error(w, w.masked_fill(mask, 0.0), x)


def test_obs_fixed_wanda_mask_beats_plain_wanda():
    w, x = _random_layer(seed=5)
    stats = _stats_for(w, x)
    target = parse_target(0.5)
    mask = make_mask(wanda_score(w, stats), target)
    out = obs_prune(w, stats.hessian, target, fixed_mask=mask)
    assert torch.equal(out == 0, mask)
    assert _recon_error(w, out, x) < _recon_error(w, w.masked_fill(mask, 0.0), x)


@pytest.mark.parametrize("pattern, blocksize", [("2:4", 128), ("2:4", 6), ("2:4", 20), ("4:8", 12), ("1:4", 3)])
def test_obs_nm_respects_the_pattern(pattern, blocksize):
    w, x = _random_layer(out=16, inp=64, tokens=256, seed=6)
    h = x.t() @ x / x.shape[0]
    target = parse_target({"2:4": 0.5, "4:8": 0.5, "1:4": 0.25}[pattern], pattern)
    out = obs_prune(w, h, target, blocksize=blocksize)
    zeros_per_group = (out == 0).reshape(-1, target.m).sum(1)
    assert bool((zeros_per_group >= target.n).all())
    assert int((out == 0).sum()) == w.numel() * target.n // target.m


def test_obs_nm_needs_divisible_width():
    w = torch.randn(4, 6)
    with pytest.raises(UserError):
        obs_prune(w, torch.eye(6), parse_target(0.5, "2:4"))


def test_obs_handles_dead_inputs():
    """An input channel that is always zero gives a singular Hessian; damping must cope."""
    w, x = _random_layer(out=8, inp=32, tokens=128, seed=7)
    x[:, :5] = 0.0
    h = x.t() @ x / x.shape[0]
    out = obs_prune(w, h, parse_target(0.5))
    assert torch.isfinite(out).all()
    assert int((out == 0).sum()) == w.numel() // 2


def _reference_factor(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """SparseGPT's chain in float64: chol(H + damp I) -> its inverse -> upper chol of that."""
    h = h.double()
    damped = h + percdamp * h.diag().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


@pytest.mark.parametrize("width", [6, 96, 300])
def test_inverse_hessian_factor_is_the_upper_factor_of_the_damped_inverse(width):
    """One float32 Cholesky of the reversed H gives SparseGPT's factor to float32 rounding, even
    with outlier channels (LLM activations have them) that stretch H's spectrum."""
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(4 * width, width, generator=gen) * torch.rand(width, generator=gen)
    x[:, :2] *= 50.0  # outlier channels: diag(H) spans about 10^4
    h = x.t() @ x / x.shape[0]
    got = inverse_hessian_factor(h, 0.01)
    assert got.dtype == torch.float32 and torch.equal(got, got.triu()) and bool((got.diag() > 0).all())
    ref = _reference_factor(h, 0.01)
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-4


def test_inverse_hessian_factor_retries_in_float64_before_damping_harder(monkeypatch):
    """float32 rounding alone must not change the damping: a failed float32 factorisation is
    retried in float64 at the same damping."""
    real = torch.linalg.cholesky

    def no_float32(a, *args, **kwargs):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("pretend float32 is not positive definite")
        return real(a, *args, **kwargs)

    w, x = _random_layer(out=4, inp=24, tokens=96, seed=8)
    h = x.t() @ x / x.shape[0]
    monkeypatch.setattr(obs.torch.linalg, "cholesky", no_float32)
    got = inverse_hessian_factor(h, 0.01)
    torch.testing.assert_close(got.double(), _reference_factor(h, 0.01), rtol=1e-5, atol=1e-6)


def test_factor_memo_factorises_a_shared_hessian_once(monkeypatch):
    calls = []
    monkeypatch.setattr(obs, "inverse_hessian_factor", lambda h, p: calls.append(len(h)) or torch.eye(len(h)))
    memo = FactorMemo(0.01)
    h = torch.eye(3)
    assert memo(h) is memo(h)  # q, then k and v with the same H object
    other = h.clone()
    memo(other)  # equal values, another tensor (another layer): computed again
    assert len(calls) == 2
    del other  # the layer's statistics are freed: the memo lets go of the factor too
    assert memo._factor is None and memo._hessian is None
    memo(h)
    assert len(calls) == 3


# ----------------------------------------------------------------- registry

def test_registry_has_the_builtin_methods():
    assert {"magnitude", "wanda", "sparsegpt"} <= set(METHODS.names())
    assert get_method("magnitude").needs == frozenset()
    assert get_method("wanda").needs == frozenset({"X"})
    assert get_method("sparsegpt").needs == frozenset({"H"})
    assert get_method("sparsegpt", percdamp=0.1, blocksize=64).describe == {"percdamp": 0.1, "blocksize": 64}


@pytest.mark.parametrize("name, suggestion", [("wandaa", "wanda"), ("sparsgpt", "sparsegpt"), ("magnitud", "magnitude")])
def test_unknown_method_suggests_the_closest(name, suggestion):
    with pytest.raises(UserError, match=f"did you mean '{suggestion}'"):
        get_method(name)


def test_unknown_method_without_a_close_match_lists_choices():
    with pytest.raises(UserError, match="choose from") as exc:
        METHODS.get("zzzzzzzz")
    assert "did you mean" not in str(exc.value)


@pytest.mark.parametrize("width", [GRAM_MIN_WIDTH - 1, GRAM_MIN_WIDTH, 576, 1000, 1536])
def test_gram_from_upper_blocks_equals_the_full_product(width):
    """H built from the blocks on and above the diagonal (the rest mirrored) is x^T x up to float32
    rounding, and exactly symmetric. Not to the bit: whether a block's product sums the tokens in the
    same order as the full product's depends on the BLAS kernel the CPU gets (equal on one Xeon, 3e-7
    apart on another)."""
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(2048, width, generator=gen) * torch.rand(width, generator=gen)
    got, full = gram(x), x.t() @ x
    assert (got - full).abs().max() <= 1e-5 * full.abs().max()
    assert torch.equal(got, got.t())
    assert torch.equal(got, gram(x))  # deterministic: the same statistics every run


def _textbook_sparsegpt(w: torch.Tensor, h: torch.Tensor, n: int, m: int, blocksize: int) -> torch.Tensor:
    """SparseGPT's N:M sweep as its paper's Algorithm 1 writes it: untransposed, one column at a time."""
    w = w.clone()
    hinv = inverse_hessian_factor(h, 0.01)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if i % m == 0:
                saliency = w1[:, i:i + m] ** 2 / torch.diag(hinv1)[i:i + m].unsqueeze(0) ** 2
                for r in range(w1.shape[0]):  # the n lowest of the group, ties to the lower index
                    order = sorted(range(m), key=lambda j: (float(saliency[r, j]), j))
                    mask1[r, [i + j for j in order[:n]]] = True
            err = w1[:, i] * mask1[:, i] / hinv1[i, i]
            w1[:, i:] -= torch.outer(err, hinv1[i, i:])
            err1[:, i] = err
        w[:, i1:i2] = w1.masked_fill(mask1, 0.0)
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


@pytest.fixture(params=["eager", "compiled"])
def sweep_mode(request, monkeypatch):
    """Run a test with the eager torch sweep and with the compiled one (methods/obs_sweep.py)."""
    monkeypatch.setenv("PRUNERZERO_OBS_SWEEP", request.param)
    if request.param == "compiled" and not obs_sweep.available():
        pytest.skip("numba is not importable here")
    return request.param


@pytest.mark.parametrize("pattern, blocksize", [("2:4", 32), ("4:8", 24), ("2:4", 128)])
def test_obs_nm_sweep_is_the_textbook_algorithm(pattern, blocksize, sweep_mode):
    """The transposed sweep with its group choice (broadcast in eager torch, compiled loops in numba) is
    SparseGPT's algorithm: the same mask and, up to rounding, the same weights. Quantised weights put
    exact ties into the first groups' choice."""
    w, x = _random_layer(out=24, inp=96, tokens=384, seed=8)
    w = (w * 4).round() / 4
    h = x.t() @ x / x.shape[0]
    n, m = map(int, pattern.split(":"))
    want = _textbook_sparsegpt(w, h, n, m, blocksize)
    got = obs_prune(w, h, parse_target(n / m, pattern), blocksize=blocksize)
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blocksize", [32, 30, 128, 17])
def test_obs_fixed_mask_sweep_is_the_textbook_update(blocksize, sweep_mode):
    """With the mask given, the blocked sweep (rank-1 updates inside a block, one product for the columns
    after it) is the column-by-column OBS update over the whole layer up to rounding, partial blocks too."""
    w, x = _random_layer(out=12, inp=70, tokens=384, seed=9)
    h = x.t() @ x / x.shape[0]
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    want = w.clone()
    hinv = inverse_hessian_factor(h, 0.01)
    for i in range(w.shape[1]):  # one column at a time over the whole layer, no blocks at all
        err = want[:, i] * mask[:, i] / hinv[i, i]
        want[:, i:] -= torch.outer(err, hinv[i, i:])
    want = want.masked_fill(mask, 0.0)
    got = obs_prune(w, h, parse_target(0.5), blocksize=blocksize, fixed_mask=mask)
    assert torch.equal(got == 0, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "unstructured"])
@pytest.mark.parametrize("given_mask", [False, True])
def test_compiled_sweep_equals_the_eager_one(monkeypatch, pattern, given_mask):
    """The compiled sweep is the eager one: the same mask and weights within float32 rounding of the
    rank-1 updates, on a layer of 150 rows (two full chunks of 64 and a partial one), partial blocks,
    ties from quantised weights, and 2 threads (chunks run in parallel)."""
    if not obs_sweep.available():
        pytest.skip("numba is not importable here")
    w, x = _random_layer(out=150, inp=200, tokens=512, seed=11)
    w = (w * 8).round() / 8
    h = x.t() @ x / x.shape[0]
    target = parse_target(0.5, pattern)
    mask = (torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) < 0.5) if given_mask else None
    torch.set_num_threads(2)  # the module's single_thread fixture restores the count afterwards
    got = {}
    for mode in ("eager", "compiled"):
        monkeypatch.setenv("PRUNERZERO_OBS_SWEEP", mode)
        got[mode] = obs_prune(w, h, target, blocksize=64, fixed_mask=mask)
    assert torch.equal(got["compiled"] == 0, got["eager"] == 0)
    torch.testing.assert_close(got["compiled"], got["eager"], rtol=1e-5, atol=1e-6)


def test_nm_groups_chosen_by_a_metric_run_the_eager_sweep(monkeypatch):
    """A metric's saliency reads the whole block at each N:M group, which the compiled sweep cannot
    call: those sweeps take the eager loop (and the compiled one is never entered)."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled sweep used for a metric's N:M choice")

    monkeypatch.setattr(obs_sweep, "sweep_block", refuse)
    w, x = _random_layer(out=16, inp=32, tokens=128, seed=12)
    h = x.t() @ x / x.shape[0]
    out = obs_prune(w, h, parse_target(0.5, "2:4"), saliency=lambda block, d, cols: block.abs())
    assert torch.equal((out == 0).reshape(16, 8, 4).sum(-1), torch.full((16, 8), 2))
