"""`prunerzero search` end to end on a tiny saved model: run folder, leaderboard, resume, bad input."""
from __future__ import annotations

import json

import pytest

from prunerzero.cli import main
from prunerzero.symbolic import load_metric

pytestmark = pytest.mark.usefixtures("single_thread")


def _search_args(model_dir, wikitext, out, *extra: str) -> list[str]:
    return ["--quiet", "search", "--model", str(model_dir), "--out", str(out), "--population", "6",
            "--generations", "2", "--seed", "0", "--nsamples", "4", "--seqlen", "32",
            "--fidelity-tokens", "64,128", "--report-data", str(wikitext), "--report-tokens", "128",
            "--leaderboard-top", "2", "--baselines", "magnitude,wanda,pruner-zero", *extra]


def test_search_writes_everything_and_resume_is_a_no_op(tiny_model_dir, wikitext_test, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(_search_args(tiny_model_dir, wikitext_test, out)) == 0
    printed = capsys.readouterr().out
    assert "best metric:" in printed and "| rank | metric |" in printed
    for name in ("job.json", "stats.safetensors", "evaluations.jsonl", "checkpoint.json", "hall_of_fame.json",
                 "best_metric.txt", "best_tree.json", "leaderboard.jsonl", "leaderboard.md"):
        assert (out / name).exists(), name
    load_metric(str(out / "best_tree.json"))
    board = (out / "leaderboard.md").read_text()
    for label in ("searched #1", "searched #2", "magnitude", "wanda", "pruner-zero", "dense"):
        assert label in board
    rows = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 5  # dense + (2 searched + 3 baselines) x 1 setting
    evaluations = (out / "evaluations.jsonl").read_text()

    assert main(["--quiet", "search", "--resume", str(out)]) == 0  # finished: nothing is redone
    assert (out / "evaluations.jsonl").read_text() == evaluations
    assert len((out / "leaderboard.jsonl").read_text().splitlines()) == len(rows)


def test_search_bad_input(tiny_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quiet", "search", "--resume", str(tmp_path / "missing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--fidelity-tokens", "128,64")) == 2
    assert "ascending" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--fitness-data", str(wikitext_test))) == 2
    assert "reporting data" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--baselines", "wandaa")) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not out.exists()
