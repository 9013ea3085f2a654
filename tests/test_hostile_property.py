"""Property tests: thousands of random formulas and byte strings thrown at the metric parser, the
metric-file and config readers and every run-folder reader. Each answer is a value or a UserError
(one line, as the CLI prints it), never a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunerzero.config import read_config_file
from prunerzero.errors import UserError
from prunerzero.search import SearchConfig, load_run, run_search
from prunerzero.search import checkpoint as ck
from prunerzero.search.job import SearchJob, read_job
from prunerzero.search.toy import ToyFitness
from prunerzero.symbolic import (PRIMITIVES, InvalidMetricError, Metric, TerminalSpec, canonical_key, format_expr,
                                 from_json, load_metric, parse, simplify)

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Formulas: mostly well-formed pieces (so many parse and go on to be simplified and evaluated),
# glued with hostile ones (huge numbers, stray symbols, long names, deep nesting).
_ATOMS = st.sampled_from(["W", "X", "G", "0", "1", "2.5", "1e400", "-3", ".5", "1e-300", "nan", "inf", "Q", "_"])
_NAMES = st.sampled_from(list(PRIMITIVES) + ["foo", "W", "exp"])
_SYMBOLS = st.sampled_from(["+", "-", "*", "/", ",", "(", ")", " ", "", "$", "\x00", "é", "\n"])


def _formula() -> st.SearchStrategy[str]:
    leaf = _ATOMS
    tree = st.recursive(leaf, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(_NAMES, st.lists(inner, min_size=1, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(inner).map(lambda t: f"-({t[0]})"),
    ), max_leaves=30)
    noisy = st.lists(st.one_of(tree, _SYMBOLS, _NAMES), min_size=1, max_size=8).map("".join)
    chains = st.tuples(st.sampled_from(["W*", "W+", "(", "sqrt("]), st.integers(1, 400)).map(lambda t: t[0] * t[1] + "W")
    return st.one_of(tree, noisy, chains, st.text(max_size=60))


TERMS = {"W": torch.randn(6, 8, generator=torch.Generator().manual_seed(0)).abs(),
         "X": torch.rand(1, 8, generator=torch.Generator().manual_seed(1)) + 0.1,
         "G": torch.rand(6, 8, generator=torch.Generator().manual_seed(2))}


def _one_line(exc: UserError) -> None:
    from prunerzero.errors import one_line

    assert one_line(exc).count("\n") == 0 and len(one_line(exc)) <= 1000


@FAST
@given(_formula())
def test_random_formulas_parse_or_refuse_in_one_line(text: str) -> None:
    try:
        metric = load_metric(text)
    except UserError as exc:
        _one_line(exc)
        return
    e = metric.expr
    assert parse(format_expr(e)) == e  # whatever parses, prints back to itself
    canonical_key(e)
    simplify(e)
    try:
        metric.scores(TERMS["W"], TERMS["X"][0], TERMS["G"], TERMS["G"])
    except InvalidMetricError:
        pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_TREE_KEYS = st.sampled_from(["data", "left", "right", "x"])
_TREE = st.recursive(st.sampled_from(["W", "X", "G", "mul", "add", "sqrt", "nope", 3, 1e308, 10**400, True, None]),
                     lambda inner: st.dictionaries(_TREE_KEYS, inner, max_size=3), max_leaves=12)


_VALUES = st.one_of(_JSON, st.integers(min_value=-(10**400), max_value=10**400), st.sampled_from(
    [10**400, -1, 0, 1, 0.5, 1e308, float("nan"), float("inf"), "", " ", "x" * 5000, "W * W", [], [1, "a"], {}]))


def _objects(cls) -> st.SearchStrategy[dict]:
    """Dicts with the real keys of a settings class (and a stray one), values anything JSON holds."""
    from dataclasses import fields

    keys = [f.name for f in fields(cls)] + ["nope"]
    return st.dictionaries(st.sampled_from(keys), _VALUES, max_size=6)


_SAVED_METRIC = st.dictionaries(st.sampled_from(["name", "formula", "tree", "terminals"]),
                                st.one_of(_VALUES, _TREE, _objects(TerminalSpec)), max_size=4)


@FAST
@given(st.one_of(_TREE, _JSON, _objects(SearchConfig), _objects(SearchJob), _objects(TerminalSpec), _SAVED_METRIC))
def test_random_json_trees_and_saved_settings_refuse_in_one_line(obj) -> None:
    for read in (from_json, Metric.from_dict, TerminalSpec.from_dict, SearchConfig.from_dict, SearchJob.from_dict):
        try:
            read(obj)
        except UserError as exc:
            _one_line(exc)


@FAST
@given(st.one_of(_JSON,
                 st.dictionaries(st.sampled_from(["format", "generation", "finished", "rng_state", "population",
                                                  "stats", "generations", "hall_of_fame"]), _VALUES, max_size=8)))
def test_random_checkpoints_are_refused_in_one_line(obj) -> None:
    for full in (True, False):
        try:
            ck.check_checkpoint(obj, Path("checkpoint.json"), full)
        except UserError as exc:
            _one_line(exc)
    record = obj if isinstance(obj, dict) else {"generation": obj}
    try:
        ck.check_evaluation(record, "evaluations.jsonl line 1")
    except UserError as exc:
        _one_line(exc)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("files")


_BYTES = st.one_of(st.binary(max_size=400), _JSON.map(lambda o: json.dumps(o).encode()),
                   st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=_BYTES)
def test_random_bytes_as_metric_and_config_files(files: Path, data: bytes) -> None:
    for name in ("metric.json", "metric.txt"):
        (files / name).write_bytes(data)
        try:
            load_metric(str(files / name))
        except UserError as exc:
            _one_line(exc)
    (files / "config.json").write_bytes(data)
    try:
        read_config_file(files / "config.json")
    except UserError as exc:
        _one_line(exc)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished toy run plus a job.json, to damage file by file."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "run"
    run_search(ToyFitness(), SearchConfig(population=6, generations=2, seed=0, hall_of_fame_size=3), out,
               progress=False)
    job = SearchJob(model="/no/such/model", calib_data="lambada", fitness_data="squad", report_data=None)
    (out / "job.json").write_text(json.dumps(job.to_dict()))
    return out


_RUN_FILES = st.sampled_from([*ck.RUN_FILES, "job.json"])


def _damaged_bytes() -> st.SearchStrategy:
    """Random bytes, random JSON, and random edits of the real file (cut, a byte flipped, a line duplicated)."""
    edits = st.tuples(st.sampled_from(["cut", "flip", "insert"]), st.integers(0, 10**6), st.binary(max_size=20))
    return st.one_of(_BYTES, edits)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(name=_RUN_FILES, damage=_damaged_bytes())
def test_random_damage_to_run_files_is_read_or_refused_in_one_line(run_dir: Path, name: str, damage) -> None:
    path = run_dir / name
    original = path.read_bytes()
    if isinstance(damage, bytes):
        data = damage
    else:
        how, at, blob = damage
        at %= len(original) + 1
        data = {"cut": original[:at], "flip": original[:at] + blob + original[at + len(blob):],
                "insert": original[:at] + blob + original[at:]}[how]
    path.write_bytes(data)
    try:
        for read in (load_run, ck.inspect_run, read_job):
            try:
                read(run_dir)
            except UserError as exc:
                _one_line(exc)
    finally:
        path.write_bytes(original)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(name=st.sampled_from(ck.RUN_FILES), cut=st.floats(0, 1))
def test_random_cuts_resume_exactly_or_refuse(run_dir: Path, tmp_path_factory, name: str, cut: float) -> None:
    """A file cut anywhere (what a full disk or a kill can leave): resume gives the clean result or refuses."""
    ref = load_run(run_dir)["hall_of_fame"]
    work = tmp_path_factory.mktemp("cut") / "run"
    shutil.copytree(run_dir, work)
    data = (work / name).read_bytes()
    (work / name).write_bytes(data[: int(len(data) * cut)])
    try:
        res = run_search(ToyFitness(), SearchConfig(population=6, generations=2, seed=0, hall_of_fame_size=3), work,
                         resume=True, progress=False)
    except UserError as exc:
        _one_line(exc)
        assert name in str(exc)
        return
    assert res.hall_of_fame == ref
