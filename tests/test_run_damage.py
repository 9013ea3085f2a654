"""Fault injection on a finished search run folder: every file in turn is cut short, torn, emptied,
filled with random bytes or deleted; then `--resume` and `analyze` must either recover exactly
(the clean run's hall of fame, best files, log records and statistics) or refuse with one line that
names the damaged file. Engine-level on the toy fitness (fast); one CLI-level run on the tiny model
for the files only a job writes (job.json, stats.safetensors)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from prunerzero.analysis import analyze_run
from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.search import SearchConfig, run_search
from prunerzero.search import checkpoint as ck
from prunerzero.search.toy import ToyFitness

CFG = SearchConfig(population=10, generations=3, seed=5, hall_of_fame_size=5)
DERIVED = (ck.HALL_OF_FAME, ck.BEST_METRIC, ck.BEST_TREE, ck.CHECKPOINT)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, object, str]:
    """A finished toy run, its result, and its analysis.md (run path left out)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    result = run_search(ToyFitness(), CFG, out, progress=False)
    analysis = tmp_path_factory.mktemp("clean-analysis")
    analyze_run(out, analysis)
    return out, result, (analysis / "analysis.md").read_text().replace(str(out), "RUN")


def _records(out: Path) -> list[tuple]:
    """The log's content, order and timings aside (a re-evaluated record is appended last)."""
    return sorted((r["generation"], r["key"], r["fidelity"], r["fitness"], r["reason"], r["expression"])
                  for r in ck.read_log(out / ck.LOG))


def _damages(name: str, data: bytes) -> dict[str, bytes | None]:
    lines = data.split(b"\n")  # data ends with "\n": lines[-1] == b""
    last = lines[-2]
    out: dict[str, bytes | None] = {
        "deleted": None, "empty": b"", "half": data[: len(data) // 2],
        "random": random.Random(len(data)).randbytes(max(len(data), 64)),
        "torn": data[: len(data) - max(2, len(last) // 2 + 1)],  # cut in the middle of the last line
    }
    if name == ck.LOG:
        out["last-record-lost"] = b"\n".join(lines[:-2]) + b"\n"
        out["newline-lost"] = data[:-1]
        out["three-torn"] = b"\n".join(lines[:-4]) + b"\n" + lines[-4][:25]
        out["garbage-line"] = b"\n".join(lines[:3] + [b"garbage{"] + lines[4:])
        out["record-without-key"] = b"\n".join(lines[:2] + [b'{"generation": 0}'] + lines[3:])
    if name == ck.CHECKPOINT:
        out["missing-keys"] = b'{"format": 1, "generation": 0}'
        out["not-an-object"] = b"[1, 2, 3]"
    return out


CASES = [(name, how) for name in ck.RUN_FILES for how in _damages(name, b"x\ny\nz\nw\nv\n")]
# What must recover exactly (the rest may refuse, in one line naming the file).
MUST_RECOVER = {(ck.LOG, "torn"), (ck.LOG, "last-record-lost"), (ck.LOG, "newline-lost"), (ck.LOG, "three-torn"),
                (ck.CHECKPOINT, "deleted")} | {(f, how) for f in (ck.HALL_OF_FAME, ck.BEST_METRIC, ck.BEST_TREE)
                                               for how in ("deleted", "empty", "half", "random", "torn")}


def _one_line_naming(exc: UserError, name: str) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 1000, text
    assert name in text, text
    return text


@pytest.mark.parametrize("name, how", CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_damaged_file_recovers_exactly_or_refuses_in_one_line(clean, tmp_path, capsys, name, how):
    ref_dir, ref, ref_md = clean
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    new = _damages(name, (ref_dir / name).read_bytes())[how]
    if new is None:
        (run / name).unlink()
    else:
        (run / name).write_bytes(new)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    # analyze: the clean analysis, or one line (and then the run folder is untouched)
    try:
        analyze_run(run, tmp_path / "analysis")
        assert (tmp_path / "analysis" / "analysis.md").read_text().replace(str(run), "RUN") == ref_md
        analyzed = True
    except UserError as exc:
        _one_line_naming(exc, name)
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
        analyzed = False

    fitness = ToyFitness()
    try:
        res = run_search(fitness, CFG, run, resume=True, progress=False)
    except UserError as exc:
        text = _one_line_naming(exc, name)
        assert (name, how) not in MUST_RECOVER, text
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # refused before writing anything
        return
    assert res.hall_of_fame == ref.hall_of_fame and res.stats == ref.stats and res.population == ref.population
    assert str(res.best) == str(ref.best)
    for f in DERIVED:
        assert (run / f).read_bytes() == (ref_dir / f).read_bytes(), f
    assert _records(run) == _records(ref_dir)
    err = capsys.readouterr().err
    if name == ck.LOG and how in ("torn", "last-record-lost", "three-torn"):
        lost = {"torn": 1, "last-record-lost": 1, "three-torn": 3}[how]
        assert fitness.calls == lost  # its candidates evaluated again, nothing else
        assert "warning" in err and ck.LOG in err and "evaluated again" in err
    else:
        assert fitness.calls == 0
    analyze_run(run, tmp_path / "after")  # and after the resume, analyze agrees with the clean run
    assert (tmp_path / "after" / "analysis.md").read_text().replace(str(run), "RUN") == ref_md
    if not analyzed:
        assert name != ck.LOG or how != "newline-lost"


def test_analyze_checks_its_out_folder_first(clean, tmp_path):
    ref_dir, _, _ = clean
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder"):
        analyze_run(ref_dir, target)
    assert target.read_text() == "not a folder" and not (ref_dir / "analysis.md").exists()


def test_damaged_checkpoint_instruction_rebuilds_it(clean, tmp_path):
    """The refusal says: delete it and resume. Doing so replays the run from the log, exactly."""
    ref_dir, ref, _ = clean
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    (run / ck.CHECKPOINT).write_bytes(b"\x00\xff garbage")
    with pytest.raises(UserError, match="delete it and resume") as info:
        run_search(ToyFitness(), CFG, run, resume=True, progress=False)
    _one_line_naming(info.value, ck.CHECKPOINT)
    (run / ck.CHECKPOINT).unlink()
    fitness = ToyFitness()
    res = run_search(fitness, CFG, run, resume=True, progress=False)
    assert fitness.calls == 0 and res.hall_of_fame == ref.hall_of_fame and res.stats == ref.stats
    assert (run / ck.CHECKPOINT).read_bytes() == (ref_dir / ck.CHECKPOINT).read_bytes()


def test_torn_record_of_an_unfinished_run_is_reported_and_replayed(clean, tmp_path, capsys):
    """A kill during the append (the real case): the torn record belongs to the running generation;
    the replay evaluates that candidate again and the run equals the clean one."""
    ref_dir, ref, _ = clean

    class Crash(BaseException):
        pass

    class Killed(ToyFitness):
        def evaluate(self, metric, fidelity):  # type: ignore[override]
            if self.calls >= 25:
                raise Crash()
            return super().evaluate(metric, fidelity)

    run = tmp_path / "run"
    with pytest.raises(Crash):
        run_search(Killed(), CFG, run, progress=False)
    logged = (run / ck.LOG).read_bytes()
    last = logged.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    (run / ck.LOG).write_bytes(logged[: len(logged) - len(last) // 2 - 1])  # the last append, half written
    res = run_search(ToyFitness(), CFG, run, resume=True, progress=False)
    assert res.hall_of_fame == ref.hall_of_fame and res.stats == ref.stats
    assert _records(run) == _records(ref_dir)
    err = capsys.readouterr().err
    assert "torn record" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the CLI, on the tiny model

def _search(model_dir, wikitext, out) -> list[str]:
    return ["--quiet", "search", "--model", str(model_dir), "--out", str(out), "--population", "6",
            "--generations", "2", "--seed", "0", "--nsamples", "4", "--seqlen", "32", "--fidelity-tokens", "64,128",
            "--report-data", str(wikitext), "--report-tokens", "128", "--leaderboard-top", "1",
            "--baselines", "magnitude"]


@pytest.mark.usefixtures("single_thread")
def test_cli_resume_and_analyze_of_damaged_job_files(tiny_model_dir, wikitext_test, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    clean = tmp_path / "clean"
    assert main(_search(tiny_model_dir, wikitext_test, clean)) == 0
    capsys.readouterr()
    hof = (clean / ck.HALL_OF_FAME).read_bytes()

    def damaged(name: str, data: bytes | None) -> Path:
        run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(clean, run)
        if data is None:
            (run / name).unlink()
        else:
            (run / name).write_bytes(data)
        return run

    # job.json: its settings cannot be guessed -- refused, in one line naming it, nothing changed
    for data in (b"garbage{", random.Random(0).randbytes(300), b'{"nsamples": "four"}', b"[]"):
        run = damaged("job.json", data)
        assert main(["--quiet", "search", "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "job.json" in err, err
        assert (run / "job.json").read_bytes() == data
        assert main(["--quiet", "analyze", str(run), "--out", str(run / "a")]) == 0  # analyze does not need it
        capsys.readouterr()

    # stats.safetensors: derived data, computed again with a warning; the run is unchanged
    run = damaged("stats.safetensors", random.Random(1).randbytes(500))
    assert main(["--quiet", "search", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "stats.safetensors is damaged" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (run / ck.HALL_OF_FAME).read_bytes() == hof

    # a torn last evaluation: reported, evaluated again, and every output agrees with the clean run
    data = (clean / ck.LOG).read_bytes()
    run = damaged(ck.LOG, data[: len(data) - 40])
    assert main(["--quiet", "analyze", str(run)]) == 2
    assert "search --resume" in capsys.readouterr().err
    assert main(["--quiet", "search", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "evaluated again" in captured.err
    best = (clean / ck.BEST_METRIC).read_text().strip()
    assert f"best metric: {best} " in captured.out
    for name in (ck.HALL_OF_FAME, ck.BEST_METRIC, ck.BEST_TREE):
        assert (run / name).read_bytes() == (clean / name).read_bytes(), name
    assert _records(run) == _records(clean)
    assert main(["--quiet", "analyze", str(run)]) == 0

    # job.json deleted: the folder still holds a run; a new search there is refused, nothing written
    run = damaged("job.json", None)
    assert main(_search(tiny_model_dir, wikitext_test, run)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err and not (run / "job.json").exists()

    # a leaderboard row of random bytes is measured again, with a warning
    run = damaged("leaderboard.jsonl", random.Random(2).randbytes(200))
    assert main(["--quiet", "search", "--resume", str(run)]) == 0
    assert "leaderboard.jsonl" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "leaderboard.jsonl").read_text().splitlines()]
    assert len(rows) == len((clean / "leaderboard.jsonl").read_text().splitlines())


@pytest.mark.usefixtures("single_thread")
def test_cli_sweep_log_damage(tiny_model_dir, wikitext_test, tmp_path, capsys, monkeypatch):
    """sweep.jsonl: a torn last line is reported and that point measured again; a damaged line
    elsewhere is refused in one line, the folder unchanged."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    argv = ["--quiet", "sweep", "--model", str(tiny_model_dir), "--nsamples", "2", "--seqlen", "32",
            "--eval-data", str(wikitext_test), "--eval-tokens", "128", "--methods", "magnitude",
            "--sparsities", "0.3,0.6", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    log = out / "sweep.jsonl"
    clean = [json.loads(line) for line in log.read_text().splitlines()]
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 30])  # the last point, half written
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "torn line" in err and len(err.strip().splitlines()) == 1
    again = [json.loads(line) for line in log.read_text().splitlines()]
    key = lambda r: (r["method"], r["sparsity"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, clean))
    assert [r["ppl"] for r in sorted(again, key=key)] == pytest.approx([r["ppl"] for r in sorted(clean, key=key)])

    lines = log.read_bytes().split(b"\n")
    log.write_bytes(b"\n".join([lines[0], b'{"method": 3}', *lines[1:]]))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "sweep.jsonl line 2 is damaged" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
