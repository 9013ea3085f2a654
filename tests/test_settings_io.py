"""The shared layers: settings (one declaration, one precedence rule, saved records in their order)
and io (one rule for a torn last line of a JSON-lines file)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from prunerzero import io
from prunerzero.config import PruneConfig
from prunerzero.errors import UserError
from prunerzero.search.job import SearchJob
from prunerzero.settings import resolve
from prunerzero.sweep.config import SweepConfig


@pytest.mark.parametrize("cls", [PruneConfig, SweepConfig, SearchJob])
def test_saved_records_name_every_field_once(cls):
    assert sorted(cls.KEY_ORDER) == sorted(f.name for f in fields(cls))
    assert list(cls().to_dict()) == list(cls.KEY_ORDER)


def test_command_line_over_config_file_over_defaults():
    cfg = resolve(PruneConfig, {"nsamples": 8}, {"nsamples": 4, "seqlen": 32})
    assert (cfg.nsamples, cfg.seqlen, cfg.method) == (8, 32, PruneConfig().method)


def test_the_parser_builds_without_torch():
    code = "import sys; from prunerzero.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_rule_for_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    io.append_jsonl(path, {"a": 1})
    io.append_jsonl(path, {"a": 2})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"a": 3')  # a kill mid-append
    scan = io.scan_jsonl(path)
    assert [r["a"] for r in scan.records] == [1, 2] and scan.torn == '{"a": 3'
    io.repair_jsonl(path, scan)
    assert path.read_bytes() == whole  # cut off: the next append starts on a fresh line
    path.write_bytes(whole + b'{"a": 3}')  # a whole record that only lost its newline: kept
    scan = io.scan_jsonl(path)
    assert [r["a"] for r in scan.records] == [1, 2, 3] and scan.torn is None
    io.repair_jsonl(path, scan)
    io.append_jsonl(path, {"a": 4})
    assert [json.loads(line)["a"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_damage_before_the_end_is_refused_or_dropped_as_the_file_says(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\ngarbage{\n{"a": 3}\n')
    with pytest.raises(UserError, match="line 2 is damaged"):
        io.scan_jsonl(path, hint="what to do")
    scan = io.scan_jsonl(path, after_damage="drop")
    assert scan.records == [{"a": 1}] and scan.damaged == 2
    io.repair_jsonl(path, scan)
    assert path.read_bytes() == b'{"a": 1}\n'
