"""The fitness ladder's rungs: perplexity, KL divergence from the dense model, and the forward-free
layer output error, each checked against a direct computation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.pipeline import collect_dense_stats
from prunerzero.search.fitness import FitnessSettings, ProxyFitness
from prunerzero.search.proxies import Rung, dense_top_k, kl_top_k, parse_rung, relative_output_error
from prunerzero.symbolic import named_metric

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rung_names_parse_both_ways():
    assert parse_rung("1024") == parse_rung("1024tok") == parse_rung("ppl:1024") == Rung("ppl", 1024)
    assert parse_rung("kl:4096") == parse_rung("kl4096tok") == Rung("kl", 4096)
    assert parse_rung("err") == Rung("err")
    for rung in (Rung("ppl", 64), Rung("kl", 64), Rung("err")):
        assert parse_rung(rung.name) == rung
    for bad in ("kl", "ppl:", "fast", "kl:-3", "0"):
        with pytest.raises(UserError):
            parse_rung(bad)


def test_kl_over_top_k_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below():
    torch.manual_seed(0)
    dense, pruned = torch.randn(50, 32) * 3, torch.randn(50, 32) * 3
    p, q = torch.log_softmax(dense, -1), torch.log_softmax(pruned, -1)
    exact = (p.exp() * (p - q)).sum(-1)
    ids, logp = dense_top_k(dense, k=32)
    assert torch.allclose(kl_top_k(pruned, ids, logp), exact, atol=1e-5)
    ids, logp = dense_top_k(dense, k=4)
    coarse = kl_top_k(pruned, ids, logp)
    assert (coarse <= exact + 1e-5).all() and (coarse >= 0).all()  # coarser outcomes: less KL
    assert torch.allclose(kl_top_k(dense, ids, logp), torch.zeros(50), atol=1e-5)


def test_relative_output_error_is_the_output_energy_changed():
    torch.manual_seed(0)
    x = torch.randn(200, 16)  # (tokens, in)
    w = torch.randn(8, 16)
    pruned = w.masked_fill(torch.rand(8, 16) < 0.5, 0.0)
    h = x.t() @ x / x.shape[0]
    direct = ((x @ (pruned - w).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum()
    assert relative_output_error(w, pruned, h) == pytest.approx(float(direct), rel=1e-4)
    assert relative_output_error(w, w, h) == 0.0


def _fitness(model, calib_ids, ladder, settings=("0.5",)) -> ProxyFitness:
    stats = collect_dense_stats(model, calib_ids, frozenset({"X", "H"}), progress=False)
    tokens = torch.randint(0, 128, (1, 600), generator=torch.Generator().manual_seed(7))
    return ProxyFitness(model, tokens, stats, FitnessSettings(settings, eval_seqlen=32, ladder=ladder))


def test_rungs_measure_what_they_say(make_tiny_model, calib_ids):
    from prunerzero.eval.perplexity import window_nll

    model = make_tiny_model("llama")
    fit = _fitness(model, calib_ids, ("err", "kl:64", "ppl:128"))
    assert fit.fidelities == ("err", "kl64tok", "128tok")
    wanda = named_metric("wanda")
    # Nothing pruned: no output error, no divergence from the dense model.
    none = _fitness(model, calib_ids, ("err", "kl:64"), settings=("0.0",))
    assert none.evaluate(wanda, "err") < 1e-20 and none.evaluate(wanda, "kl64tok") < 1e-6
    err, kl, ppl = (fit.evaluate(wanda, f) for f in fit.fidelities)
    assert 0 < err < 1 and kl > 0 and ppl > 1
    fit.apply(wanda, fit.targets[0])
    assert ppl == pytest.approx(math.exp(float(window_nll(model, fit._windows["128tok"]).mean())), rel=1e-9)
    fit.restore()
    magnitude = named_metric("magnitude")
    assert fit.evaluate(magnitude, "err") > 0 and fit.evaluate(magnitude, "kl64tok") > 0


def test_err_needs_the_hessians(make_tiny_model, calib_ids):
    model = make_tiny_model("llama")
    stats = collect_dense_stats(model, calib_ids, frozenset({"X"}), progress=False)
    with pytest.raises(UserError, match="needs the Hessians"):
        ProxyFitness(model, torch.randint(0, 128, (1, 200)), stats, FitnessSettings(eval_seqlen=32, ladder=("err",)))


def test_search_with_a_ladder_end_to_end(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["--quiet", "search", "--model", str(tiny_model_dir), "--out", str(out), "--population", "5",
                 "--generations", "2", "--nsamples", "4", "--seqlen", "32", "--ladder", "err,kl:64",
                 "--report-data", str(wikitext_test), "--report-tokens", "64", "--leaderboard-top", "1",
                 "--baselines", "wanda"]) == 0
    hof = json.loads((out / "hall_of_fame.json").read_text())
    assert set(hof[0]["fitness"]) == {"err", "kl64tok"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["fidelities"] == ["err", "kl64tok"]
    assert saved["search"]["dedup"] == "masks" and saved["search"]["invariance"] == "gauge"  # the CLI's defaults
    assert main(["--quiet", "search", "--model", str(tiny_model_dir), "--out", str(tmp_path / "bad"),
                 "--seqlen", "32", "--ladder", "err,kl:16"]) == 2


def test_scale_free_terminals_balance_sums_not_products():
    """Dividing each terminal by its layer mean leaves a product's ranking alone, changes a sum's,
    and makes the score of a rescaled layer (x10 weights, x100 gradients) the same."""
    from prunerzero.masks import make_mask, parse_target
    from prunerzero.symbolic import Metric, TerminalSpec, load_metric

    torch.manual_seed(0)
    w, x, g = torch.randn(16, 32), torch.rand(32), torch.rand(16, 32)
    scaled = TerminalSpec(scale="layer")
    product, total = load_metric("W * sqrt(X) * G"), load_metric("W * sqrt(X) + W * G")
    half = parse_target(0.5)
    assert torch.equal(make_mask(product.scores(w, x, None, g), half),
                       make_mask(Metric(product.expr, scaled).scores(w, x, None, g), half))
    raw_sum = total.scores(w, x, None, g)
    free_sum = Metric(total.expr, scaled).scores(w, x, None, g)
    assert not torch.equal(make_mask(raw_sum, half), make_mask(free_sum, half))
    assert torch.allclose(Metric(total.expr, scaled).scores(10 * w, 4 * x, None, 100 * g), free_sum, rtol=1e-5)
    assert not torch.allclose(total.scores(10 * w, 4 * x, None, 100 * g) / raw_sum, torch.full_like(raw_sum, 1000.0))
    assert TerminalSpec.from_dict(scaled.to_dict()) == scaled and "scale" not in TerminalSpec().to_dict()


def test_scale_free_search_saves_the_spec_with_its_winner(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["--quiet", "search", "--model", str(tiny_model_dir), "--out", str(out), "--population", "5",
                 "--generations", "1", "--nsamples", "4", "--seqlen", "32", "--fidelity-tokens", "64",
                 "--terminals", "layer", "--report-data", str(wikitext_test), "--report-tokens", "64",
                 "--leaderboard-top", "1", "--baselines", "wanda"]) == 0
    from prunerzero.symbolic import load_metric

    saved = load_metric(str(out / "best_metric.json"))
    assert saved.spec.scale == "layer"
    rows = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    assert any(r["label"] == "searched #1" for r in rows)  # seeded baselines are other metrics here


def test_seq_rung_is_the_sequential_pipeline_on_the_first_windows(make_tiny_model, calib_ids):
    """seq:N prunes like `prunerzero prune` (layer by layer, statistics from pruned layers) on the first
    seq_nsamples calibration windows, then measures perplexity on N tokens."""
    import copy

    from prunerzero.eval.perplexity import window_nll
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.pipeline import prune_model

    model = make_tiny_model("llama")
    stats = collect_dense_stats(model, calib_ids, frozenset({"X"}), progress=False)
    tokens = torch.randint(0, 128, (1, 600), generator=torch.Generator().manual_seed(7))
    fit = ProxyFitness(model, tokens, stats, FitnessSettings(("0.5",), eval_seqlen=32, ladder=("kl:64", "seq:128"),
                                                             seq_nsamples=2), calib_ids=calib_ids)
    wanda = named_metric("wanda")
    value = fit.evaluate(wanda, "seq128tok")
    reference = copy.deepcopy(make_tiny_model("llama"))
    prune_model(reference, symbolic_method(wanda), fit.targets[0], calib_ids[:2], progress=False)
    assert value == pytest.approx(math.exp(float(window_nll(reference, fit._windows["seq128tok"]).mean())), rel=1e-6)
    fit.restore()  # the fitness leaves the dense weights back for the next candidate
    dense = make_tiny_model("llama")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values()))
    with pytest.raises(UserError, match="calibration windows"):
        ProxyFitness(model, tokens, stats, FitnessSettings(eval_seqlen=32, ladder=("seq:64",)))


def test_a_new_search_uses_the_default_ladder(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    """Without --ladder or --fidelity-tokens a search ranks by perplexity on 1024 tokens and re-scores a
    tenth of each generation with the full sequential pipeline; --fidelity-tokens alone keeps the
    perplexity rungs it names."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    common = ["--quiet", "search", "--model", str(tiny_model_dir), "--population", "4", "--generations", "1",
              "--nsamples", "4", "--seqlen", "32", "--report-data", str(wikitext_test), "--report-tokens", "64",
              "--leaderboard-top", "1", "--baselines", "wanda"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    job = json.loads((tmp_path / "default" / "job.json").read_text())
    assert job["ladder"] == ["ppl:1024", "seq:4096"] and job["search"]["rescore_fraction"] == 0.1
    assert json.loads((tmp_path / "default" / "config.json").read_text())["fidelities"] == ["1024tok", "seq4096tok"]
    assert main([*common, "--fidelity-tokens", "64", "--out", str(tmp_path / "tokens")]) == 0
    assert json.loads((tmp_path / "tokens" / "config.json").read_text())["fidelities"] == ["64tok"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_mask_path_gives_the_same_fitness(make_tiny_model, calib_ids, arch):
    """Scores shared across settings and masks written in place give the fitness of the plain route
    (score, mask and copy per setting) to the last bit."""
    model = make_tiny_model(arch)
    stats = collect_dense_stats(model, calib_ids, frozenset({"X"}), progress=False)
    tokens = torch.randint(0, 128, (1, 600), generator=torch.Generator().manual_seed(7))
    fit = ProxyFitness(model, tokens, stats, FitnessSettings(("0.5", "2:4", "0.7"), (64,), 32))
    for name in ("wanda", "ria", "magnitude"):
        metric = named_metric(name)
        fast = fit.evaluate(metric, "64tok")
        logs = []
        for target in fit.targets:  # the plain route: DenseSnapshot.apply of the per-linear pruning
            fit.snapshot.apply(fit._pruning(metric, target))
            logs.append(fit.measure(fit.rungs["64tok"]))
        assert fast == math.exp(sum(logs) / len(logs)), name
    fit.restore()


def test_bf16_copies_give_the_fitness_of_autocast_casting_the_float32_weights(tiny_arch, make_tiny_model, calib_ids):
    """bf16 forwards of plain masks write the candidate as bf16 copies and swap them in for the
    forward (search/bf16_weights.py): the same values, to the bit, as autocast rounding the float32
    pruned weights itself, at the ppl and kl rungs, on every tiny architecture (GPT-2's Conv1D takes
    the float32 route). The model's own weights stay dense, and a restore leaves no copy in place."""
    model = make_tiny_model(tiny_arch.name)
    stats = collect_dense_stats(model, calib_ids, frozenset({"X"}), progress=False)
    tokens = torch.randint(0, 128, (1, 600), generator=torch.Generator().manual_seed(7))
    settings = FitnessSettings(("0.5", "2:4"), eval_seqlen=32, eval_dtype="bfloat16", ladder=("ppl:128", "kl:64"))
    fit = ProxyFitness(model, tokens, stats, settings)
    assert (fit._bf16 is None) == (tiny_arch.name == "gpt2")
    dense = {n: w.clone() for n, w in fit.dense.items()}
    for name in ("wanda", "ria", "magnitude"):
        metric = named_metric(name)
        for rung in fit.fidelities:
            with_copies = fit.evaluate(metric, rung)
            if fit._bf16 is not None:
                assert all(torch.equal(m.weight, dense[n]) for n, m in fit.linears.items())
                assert all(m.weight.dtype == torch.float32 for m in fit.linears.values())
            copies, fit._bf16 = fit._bf16, None
            fit.restore()
            assert fit.evaluate(metric, rung) == with_copies, (name, rung)
            fit._bf16 = copies
            fit.restore()
