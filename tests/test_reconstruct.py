"""Reconstruction after any metric's mask (`--reconstruct obs`): it lowers the layer's output
error for every named metric, respects the target exactly, and SparseGPT is the same code."""
from __future__ import annotations

import pytest
import torch

from prunerzero.calib.stats import LinearStats
from prunerzero.errors import UserError
from prunerzero.masks import parse_target, row_counts
from prunerzero.methods import get_method
from prunerzero.methods.obs import mask_block_counts, obs_prune
from prunerzero.methods.reconstruct import check_mask_only, mask_only, with_reconstruction

NAMED = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")


def _layer(seed: int = 0, out: int = 48, inp: int = 96, tokens: int = 512):
    """A random linear (out, in) whose inputs are correlated (a few shared factors, as hidden
    states are) with log-normal channel scales (LLM-like outliers), its statistics, and the
    inputs themselves (tokens, in). Correlation is what reconstruction exploits: with independent
    inputs the other weights cannot stand in for a removed one."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inp, generator=g)
    scales = torch.exp(torch.randn(inp, generator=g))
    factors = torch.randn(tokens, inp // 8, generator=g) @ torch.randn(inp // 8, inp, generator=g)
    x = (factors + 0.3 * torch.randn(tokens, inp, generator=g)) * scales  # (tokens, in)
    grad = (torch.randn(out, inp, generator=g) * weight.abs() * scales).abs()  # noisy saliency-like G
    stats = LinearStats(x_mean_sq=x.pow(2).mean(0), hessian=x.t() @ x / tokens, grad_l1=grad, grad_l2=grad * 0.5)
    return weight, stats, x


def _error(weight: torch.Tensor, new: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (weight - new).t()).norm() / (x @ weight.t()).norm())


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_lowers_the_error_of_every_named_metric(name, pattern):
    weight, stats, x = _layer()
    target = parse_target(0.5, pattern)
    plain = get_method(name)
    alone = plain.prune(weight.clone(), stats, target)
    for mode in ("fixed", "block"):
        # blocksize 32 < 96 columns: in block mode later blocks are chosen from updated weights
        rebuilt = with_reconstruction(plain, mode, blocksize=32).prune(weight.clone(), stats, target)
        assert (rebuilt == 0).sum() == (alone == 0).sum()  # the same number of weights removed
        assert _error(weight, rebuilt, x) < 0.9 * _error(weight, alone, x), (name, mode)


def test_fixed_mode_keeps_the_metric_mask_and_only_moves_survivors():
    weight, stats, _ = _layer(1)
    target = parse_target(0.5)
    alone = get_method("wanda").prune(weight.clone(), stats, target)
    rebuilt = with_reconstruction(get_method("wanda"), "fixed").prune(weight.clone(), stats, target)
    assert torch.equal(alone == 0, rebuilt == 0)
    assert not torch.allclose(rebuilt, alone)  # survivors were updated


def test_sparsegpt_is_obs_with_its_own_saliency_and_its_mask_replays_exactly():
    weight, stats, _ = _layer(2)
    for pattern in ("unstructured", "2:4"):
        target = parse_target(0.5, pattern)
        sparsegpt = get_method("sparsegpt").prune(weight.clone(), stats, target)
        assert torch.equal(sparsegpt, obs_prune(weight, stats.hessian, target, block_group="row"))
        # The same OBS code given SparseGPT's final mask up front reproduces SparseGPT's weights.
        replay = obs_prune(weight, stats.hessian, target, fixed_mask=sparsegpt == 0)
        torch.testing.assert_close(replay, sparsegpt, rtol=0, atol=1e-5)


def test_sparsegpt_honours_the_comparison_group():
    """--group row (the default) prunes each output row's share of every block; --group layer compares
    the whole block across rows, as the reference code does; N:M is the same either way."""
    weight, stats, _ = _layer(4, out=12, inp=96)
    weight[:3] *= 20.0  # three rows of large weights: a block-wide comparison spares them, per row cannot
    method = get_method("sparsegpt")
    per_row = method.prune(weight.clone(), stats, parse_target(0.5, "unstructured", "row"))
    block = method.prune(weight.clone(), stats, parse_target(0.5, "unstructured", "layer"))
    assert ((per_row == 0).sum(1) == 48).all()  # every row loses exactly half
    assert (block[:3] == 0).sum() < 3 * 48 and (block == 0).sum() == (per_row == 0).sum()
    assert torch.equal(block, obs_prune(weight, stats.hessian, parse_target(0.5), block_group="block"))
    nm = [method.prune(weight.clone(), stats, parse_target(0.5, "2:4", g)) for g in ("row", "layer")]
    assert torch.equal(nm[0], nm[1])


@pytest.mark.parametrize("group", ["row", "layer"])
def test_block_mode_counts_are_exact(group):
    weight, stats, _ = _layer(3, out=10, inp=70)  # 70 columns: blocks of 32 leave a ragged last block
    target = parse_target(0.37, "unstructured", group)
    rebuilt = with_reconstruction(get_method("wanda"), "block", blocksize=32).prune(weight, stats, target)
    pruned = rebuilt == 0
    assert int(pruned.sum()) == round(0.37 * 700)
    if group == "row":
        assert torch.equal(pruned.sum(1), row_counts(10, 70, 0.37))


@pytest.mark.parametrize("group", ["row", "layer"])
def test_block_mode_takes_each_blocks_count_from_the_metrics_mask(group):
    """Unstructured block sweeps prune, in every (row, block) ("layer": every block), as many weights as
    the metric's mask of the dense weights removes there, not an even share; which ones is the sweep's
    choice, from the updated weights."""
    weight, stats, _ = _layer(5, out=16, inp=70)
    weight[:, :20] *= 4.0  # the first columns matter more: the metric spares them, an even share could not
    target = parse_target(0.5, "unstructured", group)
    fixed = get_method("wanda").prune(weight.clone(), stats, target) == 0
    swept = with_reconstruction(get_method("wanda"), "block", blocksize=32).prune(weight.clone(), stats, target) == 0
    per_row = group == "row"
    expected = mask_block_counts(fixed, 32, per_row)
    assert tuple(expected.shape) == ((16, 3) if per_row else (3,))
    assert torch.equal(mask_block_counts(swept, 32, per_row), expected)
    assert not torch.equal(expected, mask_block_counts(torch.ones_like(fixed), 32, per_row) // 2)  # uneven
    assert not torch.equal(swept, fixed)  # later blocks chosen from updated weights


def test_obs_prune_refuses_counts_of_the_wrong_shape():
    weight, stats, _ = _layer(6, out=8, inp=64)
    with pytest.raises(ValueError, match="counts of shape"):
        obs_prune(weight, stats.hessian, parse_target(0.5), blocksize=32, block_group="row",
                  counts=torch.full((2,), 16))


def test_block_mode_respects_n_m():
    weight, stats, _ = _layer(4)
    rebuilt = with_reconstruction(get_method("pruner-zero"), "block").prune(weight, stats, parse_target(0.5, "2:4"))
    assert ((rebuilt.reshape(-1, 4) == 0).sum(1) == 2).all()


def test_reconstruction_needs_a_scoring_method_and_a_known_mode():
    with pytest.raises(UserError, match="sparsegpt already reconstructs"):
        with_reconstruction(get_method("sparsegpt"))
    with pytest.raises(UserError, match="fixed, block"):
        with_reconstruction(get_method("wanda"), "sideways")
    wrapped = with_reconstruction(get_method("ria"), "block")
    assert wrapped.needs == frozenset({"X", "H"}) and wrapped.name == "ria+obs"
    assert wrapped.describe["reconstruct"]["mode"] == "block"


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_admm_beats_obs_on_the_same_mask(name, pattern):
    """For the same mask, ADMM's weights have a lower output error than OBS's (OBS never revisits a
    column), and close to the mask's optimum, solved row by row."""
    from prunerzero.masks import make_mask
    from prunerzero.methods.admm import admm_update  # noqa: F401  (importable on its own)

    weight, stats, x = _layer()
    target = parse_target(0.5, pattern)
    method = get_method(name)
    mask = make_mask(method.score(weight, stats), target)
    obs = obs_prune(weight, stats.hessian, target, fixed_mask=mask)
    admm = with_reconstruction(method, kind="admm").prune(weight, stats, target)
    assert torch.equal(admm == 0, mask | (weight == 0))  # the metric's mask, exactly
    assert _error(weight, admm, x) < _error(weight, obs, x)
    h = stats.hessian.double()
    h = h / torch.diag(h).mean() + 0.01 * torch.eye(h.shape[0], dtype=h.dtype)
    best = torch.zeros_like(weight)
    for i in range(weight.shape[0]):  # the exact optimum of the damped problem, row by row
        keep = (~mask[i]).nonzero().squeeze(1)
        best[i, keep] = torch.linalg.solve(h[keep][:, keep], (weight[i].double() @ h)[keep]).float()
    assert _error(weight, admm, x) <= _error(weight, best, x) * 1.02 + 1e-4


def test_admm_with_no_iterations_is_the_plain_mask():
    from prunerzero.masks import make_mask
    from prunerzero.methods.admm import admm_update

    weight, stats, _ = _layer(seed=1)
    mask = make_mask(weight.abs(), parse_target(0.5))
    assert torch.equal(admm_update(weight, stats.hessian, mask, iters=0, cg_iters=0), weight.masked_fill(mask, 0.0))
    more = [_error(weight, admm_update(weight, stats.hessian, mask, iters=0, cg_iters=k), _layer(seed=1)[2])
            for k in (1, 5, 20)]
    assert more[0] >= more[1] >= more[2]  # conjugate gradients only ever lower the error


def test_each_update_takes_its_own_modes():
    with pytest.raises(UserError, match="admm takes --reconstruct-mode fixed or gradual, not block"):
        with_reconstruction(get_method("wanda"), "block", kind="admm")
    with pytest.raises(UserError, match="obs takes --reconstruct-mode fixed or block, not gradual"):
        with_reconstruction(get_method("wanda"), "gradual", kind="obs")


def test_cubic_schedule_grows_to_the_target_exactly():
    from prunerzero.methods.reconstruct import cubic_share, gradual_ramp

    assert gradual_ramp(20) == 15 and gradual_ramp(10) == 8 and gradual_ramp(1) == 1
    shares = [cubic_share(k, 8) for k in range(8)]
    assert shares[-1] == 1.0 and all(0 < a < b for a, b in zip(shares, shares[1:]))
    assert shares[0] > 1 / 8  # fast first: a third of the removals at the first of eight steps


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_gradual_masks_stay_inside_the_target(pattern):
    from prunerzero.masks import make_mask
    from prunerzero.methods.reconstruct import gradual_mask

    weight, stats, _ = _layer(2)
    target = parse_target(0.5, pattern)
    score = get_method("wanda").score(weight, stats)
    full = make_mask(score, target)
    assert torch.equal(gradual_mask(score, target, 1.0), full)
    for share in (0.25, 0.5, 0.9):
        part = gradual_mask(score, target, share)
        assert int(part.sum()) == round(weight.numel() * 0.5 * share)
        if target.structured:  # only entries the N:M pattern removes, each row's lowest-scored ones first
            assert not (part & ~full).any()
            inf = torch.tensor(float("inf"))
            assert (torch.where(part, score, -inf).amax(1) <= torch.where(full & ~part, score, inf).amin(1)).all()


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_gradual_admm_meets_the_target_and_beats_obs(name, pattern):
    """The mask that moves with the update still removes exactly the target (per row, or 2 of every 4)
    and, like the fixed mask's ADMM, leaves less output error than OBS on the metric's mask."""
    from prunerzero.masks import make_mask

    weight, stats, x = _layer()
    target = parse_target(0.5, pattern)
    method = get_method(name)
    gradual = with_reconstruction(method, "gradual", kind="admm").prune(weight.clone(), stats, target)
    assert torch.equal((gradual == 0).sum(1), torch.as_tensor(row_counts(*weight.shape, 0.5)))
    if target.structured:
        assert ((gradual.reshape(-1, 4) == 0).sum(1) == 2).all()
    obs = obs_prune(weight, stats.hessian, target, fixed_mask=make_mask(method.score(weight, stats), target))
    assert _error(weight, gradual, x) < _error(weight, obs, x)


def test_gradual_mask_moves_where_the_update_makes_weights_small():
    """Magnitude's mask chosen on the dense weights ignores what the update does; chosen again on the
    iterate it follows the weights the update shrinks: a different mask and a lower error than the
    fixed one on this correlated layer (Boza's reason for the gradual schedule)."""
    weight, stats, x = _layer(1)
    target = parse_target(0.5)
    method = get_method("magnitude")
    fixed = with_reconstruction(method, "fixed", kind="admm").prune(weight.clone(), stats, target)
    gradual = with_reconstruction(method, "gradual", kind="admm").prune(weight.clone(), stats, target)
    assert not torch.equal(fixed == 0, gradual == 0)
    assert _error(weight, gradual, x) < 0.9 * _error(weight, fixed, x)


def test_prune_with_admm_end_to_end(tiny_model_dir, wikitext_test, tmp_path):
    import json

    from prunerzero.cli import main

    out = tmp_path / "admm"
    assert main(["--quiet", "prune", "--model", str(tiny_model_dir), "--method", "wanda", "--pattern", "2:4",
                 "--reconstruct", "admm", "--nsamples", "4", "--seqlen", "32", "--eval-data", str(wikitext_test),
                 "--eval-tokens", "128", "--save", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "wanda+admm" and results["actual_sparsity"] == pytest.approx(0.5)
    assert results["method_details"]["reconstruct"] == {"kind": "admm", "mode": "fixed", "percdamp": 0.01,
                                                        "admm_iters": 10, "cg_iters": 20}
    again = tmp_path / "gradual"
    assert main(["--quiet", "prune", "--model", str(tiny_model_dir), "--method", "ria", "--pattern", "2:4",
                 "--reconstruct", "admm", "--reconstruct-mode", "gradual", "--nsamples", "4", "--seqlen", "32",
                 "--eval-data", str(wikitext_test), "--eval-tokens", "128", "--save", str(again)]) == 0
    results = json.loads((again / "results.json").read_text())
    assert results["method"] == "ria+admm" and results["actual_sparsity"] == pytest.approx(0.5)
    assert results["method_details"]["reconstruct"]["mode"] == "gradual"


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("build", ["sparsegpt", "wanda+obs-block", "ria+admm-gradual"])
def test_mask_only_keeps_the_updates_mask_on_the_dense_weights(build, pattern):
    """--mask-only: the zeros of the updating method, every kept weight its dense value to the bit,
    the input untouched; for a mask that moves with the update, not the metric's own mask."""
    weight, stats, _ = _layer(3)
    target = parse_target(0.5, pattern)
    if build == "sparsegpt":
        method = get_method("sparsegpt", blocksize=32)
    elif build == "wanda+obs-block":
        method = with_reconstruction(get_method("wanda"), "block", blocksize=32)
    else:
        method = with_reconstruction(get_method("ria"), "gradual", kind="admm")
    dense = weight.clone()
    updated = method.prune(weight, stats, target)
    kept = mask_only(method)
    masked = kept.prune(weight, stats, target)
    assert torch.equal(weight, dense)  # neither run changed its input
    assert torch.equal(masked == 0, updated == 0)
    assert torch.equal(masked[masked != 0], dense[masked != 0])  # no weight moved
    assert not torch.equal(masked, updated)  # the update was there, and was dropped
    assert kept.name == f"{method.name}-mask" and kept.describe["mask_only"] is True
    if build != "sparsegpt":
        own = get_method(build.split("+")[0]).prune(weight, stats, target)
        assert not torch.equal(masked == 0, own == 0)  # chosen with the update, not from the dense scores


def test_mask_only_needs_an_update_whose_mask_moves():
    check_mask_only("none", "fixed", False)
    check_mask_only("none", "fixed", True, method_reconstructs=True)  # --method sparsegpt --mask-only
    check_mask_only("obs", "block", True)
    check_mask_only("admm", "gradual", True)
    with pytest.raises(UserError, match="needs --reconstruct obs"):
        check_mask_only("none", "fixed", True)
    for kind in ("obs", "admm"):
        with pytest.raises(UserError, match="is the metric's own mask"):
            check_mask_only(kind, "fixed", True)


def test_prune_mask_only_end_to_end_leaves_kept_weights_dense(tiny_model_dir, wikitext_test, tmp_path):
    """The whole pipeline with --mask-only: the saved checkpoint reloads, holds exactly the target's
    zeros per linear, and every other weight is the original model's."""
    import json

    from safetensors.torch import load_file

    from prunerzero.cli import main

    original = load_file(str(tiny_model_dir / "model.safetensors"))
    for label, extra in {"sparsegpt": ["--method", "sparsegpt"],
                         "block": ["--method", "wanda", "--reconstruct", "obs", "--reconstruct-mode", "block"]}.items():
        out = tmp_path / label
        assert main(["--quiet", "prune", "--model", str(tiny_model_dir), *extra, "--pattern", "2:4", "--mask-only",
                     "--blocksize", "16", "--nsamples", "4", "--seqlen", "32", "--eval-data", str(wikitext_test),
                     "--eval-tokens", "128", "--save", str(out), "--save-model"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["config"]["mask_only"] is True and results["method"].endswith("-mask")
        assert results["actual_sparsity"] == pytest.approx(0.5)
        saved = load_file(str(next((out).rglob("model.safetensors"))))
        linears = [k for k in original if k.startswith("model.layers.") and k.endswith("proj.weight")]
        assert linears
        for key in linears:
            new, old = saved[key], original[key]
            assert ((new.reshape(-1, 4) == 0).sum(1) == 2).all(), key
            assert torch.equal(new[new != 0], old[new != 0]), key


def test_block_sweep_checks_each_block_once_then_rescores():
    """At N:M the block sweep scores a block once per group of M columns: the first scoring of each
    block is the checked `score`, the rest `rescore`, and the result is what `score` alone gives."""
    from prunerzero.methods.base import metric_method

    weight, stats, _ = _layer(4)
    calls = {"score": 0, "rescore": 0}
    wanda = get_method("wanda")

    def counted(kind):
        def score(w, st):
            calls[kind] += 1
            return wanda.score(w, st)
        return score

    target = parse_target(0.5, "2:4")
    both = metric_method("w", wanda.needs, counted("score"), rescore=counted("rescore"))
    result = with_reconstruction(both, "block", blocksize=32).prune(weight, stats, target)
    assert calls == {"score": 3, "rescore": 3 * (32 // 4 - 1)}  # 96 columns: 3 blocks of 8 groups
    alone = with_reconstruction(get_method("wanda"), "block", blocksize=32).prune(weight, stats, target)
    assert torch.equal(result, alone)
