"""`prunerzero sweep` end to end on a tiny saved model: outputs, perplexity vs sparsity, one
statistics pass for the whole sweep, resume, settings guard and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunerzero import sweep
from prunerzero.sweep import run as sweep_run
from prunerzero.cli import main
from prunerzero.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def memorised_model_dir(tiny_model_dir, wikitext_test, tmp_path_factory) -> Path:
    """The tiny random Llama after a few steps memorising the first 256 eval tokens.

    A random model sits near uniform perplexity, where pruning changes nothing measurable; one
    that knows its text gets worse the more is pruned, which is what the sweep must show. The
    softmax runs over the text's own ~125 token ids only (49k-way logits would cost seconds)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunerzero.data import load_text
    from prunerzero.windows import tokenize

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenize(tok, load_text(str(wikitext_test))[:8000])[0, :256].view(8, 32)  # a prefix tokenises alike
    vocab = torch.unique(ids)
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(30):
        hidden = model.model(input_ids=ids).last_hidden_state  # (8, 32, 64)
        logits = hidden[:, :-1] @ model.lm_head.weight[vocab].T  # (8, 31, |vocab|)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), remap[ids[:, 1:]].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _args(model_dir, wikitext, out, *extra: str) -> list[str]:
    return ["--quiet", "sweep", "--model", str(model_dir), "--nsamples", "4", "--seqlen", "32",
            "--calib-data", "lambada", "--eval-data", str(wikitext), "--eval-tokens", "256", "--out", str(out), *extra]


class Counter:
    """Wraps a function and counts its calls (monkeypatched into the sweep module)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_sweep_outputs_monotone_one_stats_pass_and_resume(memorised_model_dir, wikitext_test, tmp_path, monkeypatch,
                                                          capsys):
    import prunerzero.pipeline as pipeline

    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))  # the gradient cache
    ppl, stats, grads = Counter(sweep_run.perplexity), Counter(pipeline.collect_dense_stats), None
    monkeypatch.setattr(sweep_run, "perplexity", ppl)
    monkeypatch.setattr(pipeline, "collect_dense_stats", stats)
    import prunerzero.calib.gradients as gradients

    grads = Counter(gradients.load_or_compute_gradients)
    monkeypatch.setattr(gradients, "load_or_compute_gradients", grads)
    out = tmp_path / "sweep"
    rc = main(_args(memorised_model_dir, wikitext_test, out, "--methods", "magnitude,wanda,sparsegpt,pruner-zero",
                    "--sparsities", "0.2:0.8:0.3"))
    assert rc == 0
    assert "one-shot" in capsys.readouterr().out
    for name in ("sweep.json", "sweep.md", "sweep.png", "sweep.jsonl", "sweep_settings.json"):
        assert (out / name).exists(), name
    assert ppl.calls == 1 + 4 * 3  # dense + every (method, sparsity)
    assert stats.calls == 1 and grads.calls == 1  # one statistics pass (X+H) and one gradient pass for all

    result = json.loads((out / "sweep.json").read_text())
    assert result["sparsities"] == [0.2, 0.5, 0.8]
    assert set(result["statistics"]["needs"]) == {"X", "H", "G"}
    dense = result["dense"]["ppl"]
    by = {(r["method"], r["sparsity"]): r for r in result["results"]}
    assert len(by) == 12
    for (method, s), r in by.items():
        assert r["actual_sparsity"] == pytest.approx(s, abs=1e-3), (method, s)
    mag = [by[("magnitude", s)]["ppl"] for s in (0.2, 0.5, 0.8)]
    assert all(a <= b * 1.001 for a, b in zip(mag, mag[1:])), mag  # weakly increasing
    assert sum(mag) / 3 > dense and mag[-1] > 1.5 * dense
    # Magnitude reads no statistics, so the one-shot sweep must match `prunerzero prune` exactly.
    from prunerzero.api import prune
    from prunerzero.config import PruneConfig

    single = prune(PruneConfig(model=str(memorised_model_dir), method="magnitude", sparsity=0.5, nsamples=4, seqlen=32,
                               eval_data=str(wikitext_test), eval_tokens=256, skip_dense=True), progress=False)
    assert single["pruned"]["ppl"] == pytest.approx(by[("magnitude", 0.5)]["ppl"], rel=1e-6)
    md = (out / "sweep.md").read_text()
    assert "| dense |" in md and "| sparsegpt |" in md and "one-shot" in md and "20%" in md

    # Same settings again: nothing to measure, nothing loaded.
    assert main(_args(memorised_model_dir, wikitext_test, out, "--methods", "magnitude,wanda,sparsegpt,pruner-zero",
                      "--sparsities", "0.2:0.8:0.3")) == 0
    assert ppl.calls == 13 and stats.calls == 1
    # One more sparsity for magnitude: only that point is measured (magnitude needs no statistics).
    assert main(_args(memorised_model_dir, wikitext_test, out, "--methods", "magnitude",
                      "--sparsities", "0.2,0.5,0.65,0.8")) == 0
    assert ppl.calls == 14 and stats.calls == 1 and grads.calls == 1
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 14 and json.loads(lines[-1])["sparsity"] == 0.65


def test_other_settings_need_overwrite(memorised_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    other = sweep.SweepConfig(model=str(memorised_model_dir), nsamples=8, seqlen=32, eval_data=str(wikitext_test),
                              eval_tokens=256)
    (out / sweep.SETTINGS).write_text(json.dumps(other.settings()))
    rc = main(_args(memorised_model_dir, wikitext_test, out, "--methods", "magnitude", "--sparsities", "0.5"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "other settings" in err and "nsamples: saved 8, now 4" in err and len(err.splitlines()) == 1
    cfg = sweep.SweepConfig(model=str(memorised_model_dir), nsamples=4, seqlen=32, eval_data=str(wikitext_test),
                            eval_tokens=256)
    (out / sweep.LOG).write_text('{"method": "dense", "sparsity": 0.0, "ppl": 1.0}\n')
    assert sweep.prepare_out_dir(out, cfg, overwrite=True) == []  # old points gone, new settings saved
    assert json.loads((out / sweep.SETTINGS).read_text())["nsamples"] == 4
    assert not (out / sweep.LOG).exists()


@pytest.mark.parametrize("extra, message", [
    (["--sparsities", "0.1:0.8"], "start:stop:step"),
    (["--sparsities", "half"], "start:stop:step"),
    (["--sparsities", "0.8:0.1:0.1"], "start <= stop"),
    (["--sparsities", "0.5,1.2"], "outside [0, 1)"),
    (["--pattern", "2:4", "--sparsities", "0.6"], "means sparsity 0.5"),
    (["--methods", "wandda"], "did you mean 'wanda'"),
    (["--dtype", "float8"], "--dtype must be one of"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_is_one_line_exit_2(tiny_model_dir, wikitext_test, tmp_path, capsys, extra, message):
    out = tmp_path / "sweep"
    rc = main(_args(tiny_model_dir, wikitext_test, out, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_parse_sparsities_and_nm_grid():
    assert sweep.parse_sparsities("0.1:0.8:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert sweep.parse_sparsities("0.5, 0.2,0.5") == [0.2, 0.5]
    assert sweep.sparsity_grid(sweep.SweepConfig(pattern="2:4")) == [0.5]
    assert sweep.sparsity_grid(sweep.SweepConfig(pattern="4:8", sparsities="0.5")) == [0.5]
    with pytest.raises(UserError):
        sweep.parse_sparsities("")


def test_bf16_sweep_keeps_bf16_weights_and_float32_math(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    """--dtype bfloat16: the kept dense copies and the model stay bf16; each method gets float32."""
    seen = []
    real = sweep_run.DenseState.apply

    def spy(self, method, target):
        seen.append({w.dtype for w in self.dense.values()} | {next(self.lm.model.parameters()).dtype})
        return real(self, method, target)

    monkeypatch.setattr(sweep_run.DenseState, "apply", spy)
    out = tmp_path / "sweep"
    assert main(_args(tiny_model_dir, wikitext_test, out, "--methods", "wanda,sparsegpt", "--sparsities", "0.5",
                      "--dtype", "bfloat16", "--device", "cpu")) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert seen and all(s == {torch.bfloat16} for s in seen)
    assert result["settings"]["dtype"] == "bfloat16"
    for r in result["results"]:
        assert r["actual_sparsity"] == pytest.approx(0.5, abs=1e-3) and 1 < r["ppl"] < float("inf")

