"""bench/zeroshot_table.py: the zero-shot benchmark's standard errors and tables (pure logic; the
benchmark itself is not part of `make test`)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from zeroshot_table import (binomial_se, difference, mean_with_se, pct, real_differences,  # noqa: E402
                            setting_table)


def _result(accs: dict[str, float], n: int = 500, norm: dict[str, float] | None = None) -> dict:
    out = {t: {"acc": a, "n": n} for t, a in accs.items()}
    for t, a in (norm or {}).items():
        out[t]["acc_norm"] = a
    return out


def test_binomial_se_and_mean():
    assert binomial_se(0.5, 100) == 0.05
    assert binomial_se(0.0, 10) == 0.0 and math.isnan(binomial_se(0.5, 0))
    r = {"a": {"acc": 0.5, "n": 100}, "b": {"acc": 0.9, "n": 400}}
    mean, se = mean_with_se(r, ["a", "b"])
    assert mean == 0.7 and math.isclose(se, math.sqrt(0.05 ** 2 + 0.015 ** 2) / 2)
    assert mean_with_se({"a": {"acc": None, "n": 5}}, ["a"]) is None
    assert pct((0.4567, 0.0222)) == "45.7 ± 2.2" and pct(None) == "-" and pct((0.5, 0.01), bold=True) == "**50.0 ± 1.0**"
    d, s = difference((0.6, 0.03), (0.5, 0.04))
    assert math.isclose(d, 0.1) and math.isclose(s, 0.05)


def test_only_differences_beyond_two_standard_errors_are_called_real():
    means = {"dense": (0.60, 0.01), "wanda": (0.55, 0.01), "magnitude": (0.54, 0.01), "ria": None}
    real = real_differences(means)
    # dense - wanda = 5.0 ± 1.4 and dense - magnitude = 6.0 ± 1.4 are real; wanda - magnitude (1.0) is not
    assert real == ["dense > magnitude (+6.0 ± 1.4)", "dense > wanda (+5.0 ± 1.4)"]
    assert real_differences({"a": (0.5, 0.05), "b": (0.45, 0.05)}) == []


def test_setting_table_rows():
    tasks = ["rte", "hellaswag"]
    cols = {"dense": _result({"rte": 0.6, "hellaswag": 0.4}, norm={"hellaswag": 0.45}),
            "wanda 50%": _result({"rte": 0.5, "hellaswag": 0.3}, norm={"hellaswag": 0.35})}
    cols["dense"]["rte"]["n"] = cols["wanda 50%"]["rte"]["n"] = 277  # rte has 277 examples in all
    lines = setting_table(cols, tasks, {"dense": 12.0, "wanda 50%": 30.4})
    assert lines[0] == "| task | n | dense | wanda 50% |"
    assert lines[2] == "| rte | 277 | 60.0 ± 2.9 | 50.0 ± 3.0 |"
    assert lines[3] == "| hellaswag | 500 | 40.0 ± 2.2 | 30.0 ± 2.0 |"
    assert lines[4] == "| hellaswag (acc_norm) | 500 | 45.0 ± 2.2 | 35.0 ± 2.1 |"
    assert lines[5] == "| **mean acc** | | **50.0 ± 1.8** | **40.0 ± 1.8** |"
    assert lines[6] == "| mean acc - dense (* beyond 2 se) | | - | -10.0 ± 2.6 * |"
    assert lines[7] == "| wall s | | 12 | 30 |"
