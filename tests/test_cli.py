"""The command line end to end on a tiny saved model: results, saved checkpoints, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunerzero.cli import main
from prunerzero.data import load_text
from prunerzero.masks import ROW_BAND
from prunerzero.windows import tokenize
from prunerzero.eval.perplexity import perplexity
from prunerzero.models import find_decoder_layers, find_linears, weight_matrix

pytestmark = pytest.mark.usefixtures("single_thread")


def _prune_args(model_dir, wikitext, *extra: str) -> list[str]:
    return ["--quiet", "prune", "--model", str(model_dir), "--nsamples", "4", "--seqlen", "32",
            "--eval-data", str(wikitext), "--eval-tokens", "256", *extra]


def test_prune_writes_results_and_a_reloadable_model(tiny_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(_prune_args(tiny_model_dir, wikitext_test, "--method", "wanda", "--pattern", "2:4",
                          "--save", str(out), "--save-model"))
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "wanda" and results["pattern"] == "2:4"
    assert results["actual_sparsity"] == pytest.approx(0.5, abs=1e-9)
    assert all(row["sparsity"] == pytest.approx(0.5) for row in results["layers"])
    assert results["calibration"] == {"data": "general", "nsamples": 4, "seqlen": 32, "seed": 0, "dtype": "float32"}
    for key in ("dense", "pruned", "eval", "seconds", "versions", "config"):
        assert key in results
    assert results["eval"]["tokens"] == 256
    assert "pruned" in capsys.readouterr().out

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    _, layers = find_decoder_layers(reloaded)
    for linear in find_linears(layers[0]).values():
        groups = weight_matrix(linear).reshape(-1, 4)
        assert ((groups == 0).sum(1) >= 2).all()
    tokens = tokenize(__import__("transformers").AutoTokenizer.from_pretrained(out / "model"),
                      load_text(str(wikitext_test)))
    again = perplexity(reloaded, tokens, 32, 256, progress=False)["ppl"]
    assert again == pytest.approx(results["pruned"]["ppl"], rel=1e-5)


def test_same_seed_same_result_and_metric_equals_method(tiny_model_dir, wikitext_test, tmp_path):
    runs = {}
    for label, extra in {"a": ["--method", "wanda"], "b": ["--method", "wanda"],
                         "formula": ["--metric", "abs(W) * sqrt(X)"]}.items():
        assert main(_prune_args(tiny_model_dir, wikitext_test, *extra, "--save", str(tmp_path / label),
                                "--save-model")) == 0
        runs[label] = AutoModelForCausalLM.from_pretrained(tmp_path / label / "model").state_dict()
    for name, tensor in runs["a"].items():
        assert torch.equal(tensor, runs["b"][name])
        assert torch.equal(tensor == 0, runs["formula"][name] == 0), name
    saved = json.loads((tmp_path / "formula" / "results.json").read_text())
    assert saved["method_details"]["canonical_key"]
    assert saved["method_details"]["metric"]["terminals"]["x"] == "mean_sq"


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--pattern", "2:4", "--sparsity", "0.6"], "means sparsity 0.5"),
    (["--pattern", "diagonal"], "unknown pattern"),
    (["--method", "wandda"], "did you mean 'wanda'"),
    (["--metric", "abs(W * "], "position"),
    (["--seqlen", "256", "--eval-tokens", "512"], "longer than the model's context"),
    (["--calib-data", "/no/such/file.txt"], "data not found"),
    (["--zero-shot", "mmlu"], "unknown zero-shot task"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_model_dir, wikitext_test, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    rc = main(_prune_args(tiny_model_dir, wikitext_test, "--save", str(out), *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_model_and_unreachable_data(tmp_path, tiny_model_dir, capsys):
    assert main(["prune", "--model", str(tmp_path / "nope")]) == 2
    assert "model not found" in capsys.readouterr().err
    rc = main(["--quiet", "prune", "--model", str(tiny_model_dir), "--eval-data", "wikitext2", "--method", "magnitude",
               "--seqlen", "32", "--save", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--eval-data path/to/wiki.test.raw" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_existing_results_need_overwrite(tiny_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--method", "magnitude", "--save", str(out))) == 0
    before = (out / "results.json").read_text()
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--method", "magnitude", "--save", str(out))) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--method", "magnitude", "--save", str(out),
                            "--overwrite")) == 0


def test_metric_show_and_convert_round_trip(tmp_path, capsys):
    assert main(["metric", "show", "abs(W*W) * mms(G)"]) == 0
    shown = capsys.readouterr().out
    assert "key:" in shown and '"data": "mul"' in shown
    tree = tmp_path / "tree.json"
    assert main(["metric", "convert", "abs(W*W) * mms(G)", "--to", "json", "-o", str(tree)]) == 0
    assert json.loads(tree.read_text())["data"] == "mul"
    assert main(["metric", "convert", str(tree), "--to", "text"]) == 0
    assert capsys.readouterr().out.strip() == "abs(W * W) * mms(G)"
    assert main(["metric", "show", "mul(W,"]) == 2
    assert "position" in capsys.readouterr().err


def test_eval_command_and_metric_file_with_gradients(tiny_model_dir, wikitext_test, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    assert main(["--quiet", "eval", "--model", str(tiny_model_dir), "--eval-data", str(wikitext_test),
                 "--eval-seqlen", "32", "--eval-tokens", "128", "--json", str(tmp_path / "eval.json")]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"]["tokens"] == 128

    tree = tmp_path / "best_tree.json"  # Pruner-Zero's own file format
    tree.write_text(json.dumps({"data": "mul", "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"},
                                "right": {"data": "W"}}}, "right": {"data": "mms", "left": {"data": "G"}}}))
    out = tmp_path / "run"
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--metric-file", str(tree), "--pattern", "4:8",
                            "--save", str(out))) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_details"]["formula"] == "abs(W * W) * mms(G)"
    assert results["gradients"]["cached"] is False and results["seconds"]["gradients"] > 0
    assert results["actual_sparsity"] == pytest.approx(0.5)
    # Same gradients again: read from the disk cache.
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--metric-file", str(tree), "--pattern", "4:8",
                            "--save", str(tmp_path / "run2"))) == 0
    assert json.loads((tmp_path / "run2" / "results.json").read_text())["gradients"]["cached"] is True


def test_group_layer_is_honoured_and_said(tiny_model_dir, wikitext_test, tmp_path, capsys, monkeypatch):
    """--group layer: a gradient score competes across the whole layer (rows lose different shares, the
    layer half); --group band too, each row's share within ROW_BAND of half; the summary and
    results.json say which group ran; N:M ignores the group."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    runs = {}
    for label, extra in {"row": ["--method", "gblm"], "layer": ["--method", "gblm", "--group", "layer"],
                         "band": ["--method", "gblm", "--group", "band"],
                         "2:4": ["--method", "gblm", "--pattern", "2:4"]}.items():
        capsys.readouterr()
        assert main(_prune_args(tiny_model_dir, wikitext_test, *extra, "--save", str(tmp_path / label),
                                "--save-model")) == 0
        runs[label] = (json.loads((tmp_path / label / "results.json").read_text()), capsys.readouterr().out)
    assert runs["row"][0]["group"] == "row" and "compared per output row" in runs["row"][1]
    assert runs["layer"][0]["group"] == "layer" and "compared across each layer" in runs["layer"][1]
    assert "compared" not in runs["2:4"][1]
    assert runs["layer"][0]["pruned"]["ppl"] != runs["row"][0]["pruned"]["ppl"]
    assert all(row["sparsity"] == pytest.approx(0.5, abs=1e-6) for row in runs["layer"][0]["layers"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "layer" / "model")
    _, layers = find_decoder_layers(model)
    shares = torch.cat([(weight_matrix(m) == 0).float().mean(1) for m in find_linears(layers[0]).values()])
    assert shares.min() < 0.5 < shares.max()  # the rows' shares differ; per row each would be exactly half
    assert runs["band"][0]["group"] == "band" and f"each row within {ROW_BAND:g} of the target" in runs["band"][1]
    banded = AutoModelForCausalLM.from_pretrained(tmp_path / "band" / "model")
    for module in find_linears(find_decoder_layers(banded)[1][0]).values():
        w = weight_matrix(module)  # (out, in)
        lo, hi = math.floor((0.5 - ROW_BAND) * w.shape[1] + 1e-9), math.ceil((0.5 + ROW_BAND) * w.shape[1] - 1e-9)
        removed = (w == 0).sum(1)
        assert int(removed.min()) >= lo and int(removed.max()) <= hi
        assert int(removed.sum()) == round(w.numel() / 2)


def test_output_head_is_pruned_only_when_asked(tiny_model_dir, wikitext_test, tmp_path, capsys):
    for label, extra in {"default": [], "head": ["--prune-head"]}.items():
        out = tmp_path / label
        assert main(_prune_args(tiny_model_dir, wikitext_test, "--method", "wanda", *extra,
                                "--save", str(out), "--save-model")) == 0
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        head = model.get_output_embeddings().weight
        results = json.loads((out / "results.json").read_text())
        if label == "default":
            assert "head" not in results and int((head == 0).sum()) == 0
        else:
            assert results["head"] == {"name": "lm_head", "tied_to_input_embeddings": True}
            assert float((head == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
            assert results["layers"][-1]["name"] == "lm_head"
            assert torch.equal(model.get_input_embeddings().weight, head)  # tied: one matrix
            assert "tied" in capsys.readouterr().out
    assert main(_prune_args(tiny_model_dir, wikitext_test, "--method", "pruner-zero", "--prune-head",
                            "--save", str(tmp_path / "bad"))) == 2
    assert "output head" in capsys.readouterr().err and not (tmp_path / "bad").exists()
