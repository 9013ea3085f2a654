"""OWL layer-wise sparsity: the ratios' arithmetic, and `prune --allocation owl` end to end."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunerzero.allocation import outlier_ratio, owl_sparsities
from prunerzero.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@settings(max_examples=60, deadline=None)
@given(
    ratios=st.lists(st.floats(0, 50), min_size=2, max_size=12),
    sparsity=st.floats(0.2, 0.8),
    lam=st.floats(0, 0.15),
    data=st.data(),
)
def test_owl_ratios_keep_the_weighted_mean_and_spread(ratios, sparsity, lam, data):
    numel = data.draw(st.lists(st.integers(1, 10_000), min_size=len(ratios), max_size=len(ratios)))
    layer = owl_sparsities(ratios, sparsity, lam, numel)
    mean = sum(s * n for s, n in zip(layer, numel)) / sum(numel)
    assert mean == pytest.approx(sparsity, abs=1e-12)
    assert max(layer) - min(layer) <= 2 * lam + 1e-12
    for i in range(len(ratios)):  # more outliers never means a higher sparsity
        for j in range(len(ratios)):
            if ratios[i] > ratios[j]:
                assert layer[i] <= layer[j] + 1e-12


def test_owl_equal_ratios_are_uniform_and_extremes_span_two_lambda():
    assert owl_sparsities([3.0, 3.0, 3.0], 0.5, 0.08, [1, 1, 1]) == pytest.approx([0.5, 0.5, 0.5])
    assert owl_sparsities([0.0, 5.0, 10.0], 0.5, 0.08, [1, 1, 1]) == pytest.approx([0.58, 0.5, 0.42])


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = [torch.ones(2, 5), torch.tensor([[100.0, 1.0]])]  # mean = 111 / 12 = 9.25
    assert outlier_ratio(scores, 5.0) == pytest.approx(100 / 12)
    assert outlier_ratio(scores, 20.0) == 0.0


def _prune(model_dir, wikitext, out, *extra: str) -> int:
    return main(["--quiet", "prune", "--model", str(model_dir), "--nsamples", "4", "--seqlen", "32",
                 "--eval-data", str(wikitext), "--eval-tokens", "256", "--save", str(out), *extra])


def test_prune_with_owl_and_reconstruction(tiny_model_dir, wikitext_test, tmp_path):
    out = tmp_path / "owl"
    assert _prune(tiny_model_dir, wikitext_test, out, "--method", "wanda", "--sparsity", "0.6",
                  "--allocation", "owl", "--owl-m", "2", "--owl-lambda", "0.1", "--reconstruct", "obs") == 0
    results = json.loads((out / "results.json").read_text())
    alloc = results["allocation"]
    assert alloc["kind"] == "owl" and alloc["m"] == 2 and alloc["lambda"] == 0.1
    assert len(alloc["layer_sparsity"]) == len(alloc["outlier_ratio"]) >= 2
    assert max(alloc["layer_sparsity"]) > min(alloc["layer_sparsity"])  # a real, non-uniform allocation
    assert alloc["overall_sparsity"] == pytest.approx(0.6, abs=1e-12)
    assert (out / alloc["plot"]).stat().st_size > 0
    # Whole weights per linear: exact up to half a weight per linear.
    assert abs(results["actual_sparsity"] - 0.6) * sum(r["numel"] for r in results["layers"]) <= len(results["layers"]) / 2
    layer_of = {r["name"]: int(r["name"].split(".")[-3]) for r in results["layers"]}
    for row in results["layers"]:
        assert row["sparsity"] == pytest.approx(alloc["layer_sparsity"][layer_of[row["name"]]], abs=1 / row["numel"])
    assert results["method"] == "wanda+obs" and results["method_details"]["reconstruct"]["mode"] == "fixed"


@pytest.mark.parametrize("extra, message", [
    (["--pattern", "2:4", "--allocation", "owl"], "needs unstructured"),
    (["--sparsity", "0.5", "--allocation", "owl", "--owl-lambda", "0.6"], "--owl-lambda 0.6"),
    (["--method", "sparsegpt", "--reconstruct", "obs"], "sparsegpt already reconstructs"),
])
def test_bad_allocation_or_reconstruction_is_one_line(tiny_model_dir, wikitext_test, tmp_path, capsys, extra, message):
    assert _prune(tiny_model_dir, wikitext_test, tmp_path / "bad", *extra) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
