"""Hostile and careless input, as a table: every command exits 2 with one line on stderr and
writes nothing (the folder the command was pointed at stays as it was, down to the bytes)."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import pytest

from prunerzero.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

# Each case: id -> (argv builder (ctx) -> list[str], words the error line must hold)
Ctx = dict[str, Path]


def _prune(ctx: Ctx, *extra: str) -> list[str]:
    return ["--quiet", "prune", "--model", str(ctx["model"]), "--nsamples", "2", "--seqlen", "64",
            "--eval-tokens", "256", "--eval-data", str(ctx["wikitext"]), "--save", str(ctx["out"]), *extra]


def _sweep(ctx: Ctx, *extra: str) -> list[str]:
    return ["--quiet", "sweep", "--model", str(ctx["model"]), "--nsamples", "2", "--seqlen", "64",
            "--eval-tokens", "256", "--eval-data", str(ctx["wikitext"]), "--methods", "magnitude", *extra]


def _search(ctx: Ctx, *extra: str) -> list[str]:
    return ["--quiet", "search", "--model", str(ctx["model"]), "--population", "4", "--generations", "1",
            "--nsamples", "2", "--seqlen", "32", "--fidelity-tokens", "64", "--report-data", str(ctx["wikitext"]),
            *extra]


LONG = "x" * 5000
CASES: dict[str, tuple[Callable[[Ctx], list[str]], str]] = {
    # the metric language
    "mul-chain-300": (lambda c: ["metric", "show", "*".join(["W"] * 300)], "nested too deeply"),
    "add-chain-250": (lambda c: _prune(c, "--metric", "+".join(["W"] * 250)), "nested too deeply"),
    "parens-3000": (lambda c: ["metric", "show", "(" * 3000 + "W" + ")" * 3000], "nested too deeply"),
    "huge-number": (lambda c: ["metric", "show", "1e400*W"], "too large"),
    "formula-too-long": (lambda c: ["metric", "show", "W+" * 6000 + "W"], "too long"),
    "metric-random-json": (lambda c: ["metric", "show", str(c["random_json"])], "not UTF-8"),
    "metric-dir": (lambda c: ["metric", "show", str(c["folder"])], "is a folder"),
    "metric-file-random": (lambda c: _prune(c, "--metric-file", str(c["random_txt"])), "not UTF-8"),
    "metric-file-dir": (lambda c: _prune(c, "--metric-file", str(c["folder"])), "is a folder"),
    "metric-file-missing": (lambda c: _prune(c, "--metric-file", str(c["folder"] / "no.json")), "not found"),
    "metric-file-no-suffix": (lambda c: _prune(c, "--metric-file", str(c["formula_file"])), ".json or .txt"),
    "metric-empty": (lambda c: _prune(c, "--metric", ""), "empty value"),
    "metric-blank": (lambda c: _prune(c, "--metric", "   "), "empty value"),
    "metric-file-empty": (lambda c: _prune(c, "--metric-file", ""), "empty value"),
    # scores that cannot rank weights: refused before the model loads ...
    "metric-W/W": (lambda c: _prune(c, "--metric", "W/W"), "cannot rank"),
    "metric-0*W+1": (lambda c: _prune(c, "--metric", "0*W+1"), "constant"),
    "metric-log(0*W)": (lambda c: _prune(c, "--metric", "log(0*W)"), "constant"),
    "metric-constant": (lambda c: _prune(c, "--metric", "3"), "constant"),
    # ... or, where it depends on the weights, after it, naming the linear
    "metric-overflow": (lambda c: _prune(c, "--metric", "exp(exp(exp(W * 1000)))"), "inf (in model.layers.0."),
    # config files, data, models
    "config-random": (lambda c: _prune(c, "--config", str(c["random_json"])), "not UTF-8"),
    "config-dir": (lambda c: _prune(c, "--config", str(c["folder"])), "is a folder"),
    "config-empty-value": (lambda c: _prune(c, "--config", str(c["empty_value_config"])), "calib_data is empty"),
    "fake-gguf": (lambda c: _prune(c, "--model", str(c["fake_gguf"])), "not a GGUF"),
    "model-is-a-file": (lambda c: _prune(c, "--model", str(c["random_txt"])), "neither a Hugging Face"),
    "model-long-name": (lambda c: _prune(c, "--model", LONG), "model not found"),
    "model-hub-offline": (lambda c: _prune(c, "--model", "nosuchorg/nosuchmodel"), "HF_HUB_OFFLINE"),
    "method-long-name": (lambda c: _prune(c, "--method", LONG), "5000 characters"),
    "eval-data-empty-file": (lambda c: _prune(c, "--eval-data", str(c["empty_txt"])), "is empty"),
    "eval-data-too-short": (lambda c: _prune(c, "--eval-data", str(c["short_txt"])), "fewer than one window"),
    "eval-data-empty": (lambda c: _prune(c, "--eval-data", ""), "empty value"),
    "calib-data-empty-file": (lambda c: _prune(c, "--calib-data", str(c["empty_txt"])), "is empty"),
    "calib-data-dir": (lambda c: _prune(c, "--calib-data", str(c["folder"])), "is a folder"),
    "eval-empty-file": (lambda c: ["--quiet", "eval", "--model", str(c["model"]), "--eval-data", str(c["empty_txt"])],
                        "is empty"),
    "blocksize-0": (lambda c: _prune(c, "--method", "sparsegpt", "--blocksize", "0"), "--blocksize must be >= 1"),
    "mask-only-no-update": (lambda c: _prune(c, "--method", "wanda", "--mask-only"), "needs --reconstruct obs"),
    "mask-only-fixed": (lambda c: _prune(c, "--reconstruct", "obs", "--mask-only"), "the metric's own mask"),
    "search-mask-only-no-update": (lambda c: _search(c, "--out", str(c["out"]), "--mask-only"),
                                   "needs --reconstruct obs"),
    "sparsegpt-band": (lambda c: _prune(c, "--method", "sparsegpt", "--group", "band"), "the band group bounds"),
    "sweep-sparsegpt-band": (lambda c: _sweep(c, "--out", str(c["out"]), "--methods", "wanda,sparsegpt", "--group",
                                              "band"), "the band group bounds"),
    "search-sparsegpt-band": (lambda c: _search(c, "--out", str(c["out"]), "--settings", "0.5:band", "--baselines",
                                                "wanda,sparsegpt"), "the band group bounds"),
    "group-unknown": (lambda c: _prune(c, "--group", "rows"), "unknown comparison group"),
    "percdamp-nan": (lambda c: _prune(c, "--method", "sparsegpt", "--percdamp", "nan"), "--percdamp"),
    "sweep-batch-size-0": (lambda c: _sweep(c, "--out", str(c["out"]), "--batch-size", "0"), "--batch-size"),
    # where results go: checked before the work
    "save-empty": (lambda c: _prune(c, "--method", "magnitude", "--save", ""), "empty value"),
    "save-under-a-file": (lambda c: _prune(c, "--method", "magnitude", "--save", str(c["random_txt"] / "x")),
                          "not a folder"),
    "save-is-a-file": (lambda c: _prune(c, "--method", "magnitude", "--save", str(c["random_txt"])),
                       "not a folder"),
    "convert-onto-folder": (lambda c: ["metric", "convert", "W", "-o", str(c["folder"])], "is a folder"),
    "eval-json-onto-folder": (lambda c: ["--quiet", "eval", "--model", str(c["model"]), "--eval-data",
                                         str(c["wikitext"]), "--json", str(c["folder"])], "is a folder"),
    "analyze-not-a-run": (lambda c: ["analyze", str(c["folder"])], "no evaluations.jsonl"),
    "analyze-missing": (lambda c: ["analyze", str(c["folder"] / "nope")], "run folder not found"),
    # sweep grids
    "sparsities-empty": (lambda c: _sweep(c, "--out", str(c["out"]), "--sparsities", ""), "empty value"),
    "sparsities-inf": (lambda c: _sweep(c, "--out", str(c["out"]), "--sparsities", "0:inf:0.1"), "finite"),
    "sparsities-nan": (lambda c: _sweep(c, "--out", str(c["out"]), "--sparsities", "nan"), "outside [0, 1)"),
    "sparsities-huge-grid": (lambda c: _sweep(c, "--out", str(c["out"]), "--sparsities", "0.1:0.9:1e-9"),
                             "at most 200"),
    "sweep-methods-empty": (lambda c: _sweep(c, "--out", str(c["out"]), "--methods", ""), "empty list"),
    "sweep-out-is-a-file": (lambda c: _sweep(c, "--out", str(c["random_txt"])), "not a folder"),
    "sweep-settings-random": (lambda c: _sweep(c, "--out", str(c["bad_sweep"])), "sweep_settings.json is damaged"),
    # search
    "search-settings-empty": (lambda c: _search(c, "--out", str(c["out"]), "--settings", ""), "empty list"),
    "search-settings-garbage": (lambda c: _search(c, "--out", str(c["out"]), "--settings", "a:b"),
                                "not a sparsity setting"),
    "search-out-is-a-file": (lambda c: _search(c, "--out", str(c["random_txt"])), "not a folder"),
    "search-fake-gguf": (lambda c: _search(c, "--out", str(c["out"]), "--model", str(c["fake_gguf"])),
                         "not a GGUF"),
    "search-resume-random-job": (lambda c: ["--quiet", "search", "--resume", str(c["bad_run"])], "job.json"),
    "search-max-depth": (lambda c: _search(c, "--out", str(c["out"]), "--max-depth", "500"), "max_depth"),
}


@pytest.fixture
def ctx(tmp_path, tiny_model_dir, wikitext_test, tmp_path_factory, monkeypatch) -> Ctx:
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path_factory.mktemp("cache")))  # outside the watched folder
    root = tmp_path / "work"
    root.mkdir()
    rng = random.Random(0)
    files = {"random_json": rng.randbytes(300), "random_txt": b"\xff\xfe" + rng.randbytes(300),
             "fake_gguf": b"hello, not a model\n", "empty_txt": b"", "short_txt": b"only a few words\n",
             "formula_file": b"W * sqrt(X)\n",
             "empty_value_config": b'{"calib_data": "", "method": "wanda"}'}
    names = {"random_json": "random.json", "random_txt": "random.txt", "fake_gguf": "fake.gguf",
             "empty_txt": "empty.txt", "short_txt": "short.txt", "formula_file": "formula",
             "empty_value_config": "config.json"}
    out: Ctx = {"model": tiny_model_dir, "wikitext": wikitext_test, "out": root / "out", "folder": root / "folder"}
    (root / "folder").mkdir()
    for key, data in files.items():
        out[key] = root / names[key]
        out[key].write_bytes(data)
    bad = root / "bad-run"
    bad.mkdir()
    (bad / "job.json").write_bytes(rng.randbytes(200))
    out["bad_run"] = bad
    sweep = root / "bad-sweep"
    sweep.mkdir()
    (sweep / "sweep_settings.json").write_bytes(rng.randbytes(100))
    out["bad_sweep"] = sweep
    return out


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_exit_2_nothing_written(ctx, capsys, case):
    build, words = CASES[case]
    before = _snapshot(ctx["folder"].parent)
    try:
        rc = main(build(ctx))
    except SystemExit as exc:  # argparse's refusals (empty values) exit from parse_args, also with 2
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and len(err) < 600, err
    assert "error:" in err and words in err, err
    assert _snapshot(ctx["folder"].parent) == before


@pytest.mark.parametrize("command", ["prune", "sweep", "search", "convert"])
def test_unwritable_output_folder_fails_before_the_work(ctx, capsys, monkeypatch, command):
    """What a read-only folder does (root cannot be locked out by chmod, so the write probe is made to
    fail as the filesystem would)."""
    import prunerzero.io as atomic

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    out = str(ctx["folder"] / "run")
    argv = {"prune": _prune(ctx, "--method", "magnitude", "--save", out), "sweep": _sweep(ctx, "--out", out),
            "search": _search(ctx, "--out", out), "convert": ["metric", "convert", "W", "-o", out + ".json"]}[command]
    before = _snapshot(ctx["folder"].parent)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not writable: Permission denied" in err and len(err.splitlines()) == 1, err
    assert _snapshot(ctx["folder"].parent) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_save_folder_fails_before_the_work(ctx, capsys):
    locked = ctx["folder"] / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(_prune(ctx, "--method", "magnitude", "--save", str(locked / "run"))) == 2
        err = capsys.readouterr().err.strip()
        assert "not writable" in err and len(err.splitlines()) == 1
    finally:
        locked.chmod(0o700)
