"""One window rule for every path (BOS-aware), and perplexity whose memory ignores the vocabulary.

Tiny random Gemma-3 and Llama-3-style models get a tokenizer that adds a BOS token by default
(SmolLM2's tokenizer with a BOS post-processor, as Llama-3's and Gemma's add one); every batch of
token ids any command feeds the model is recorded at the embedding, and each must start with BOS.
A tokenizer that adds none (SmolLM2's) keeps the earlier windows bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.eval import perplexity as ppl_module
from prunerzero.eval.perplexity import _full_nll, chunked_logits, perplexity, token_nll
from prunerzero.windows import NO_BOS, Windowing, calibration_windows, eval_windows, tokenize, windowing_for

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def bos_tokenizer(smollm_tokenizer, tmp_path_factory):
    """SmolLM2's tokenizer made to add its BOS (<|im_start|>) first, as Llama-3's and Gemma's do."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("bos-tokenizer")
    smollm_tokenizer.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.bos_token_id)])
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def no_bos_tokenizer_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a tokenizer that has no BOS token at all."""
    import shutil

    path = tmp_path_factory.mktemp("no-bos") / "model"
    shutil.copytree(tiny_model_dir, path)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["bos_token"] = None
    cfg_file.write_text(json.dumps(cfg))
    return path


def _save(model: nn.Module, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bos_models(bos_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Saved tiny Gemma-3 and Llama-3-style models whose tokenizer adds BOS."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    vocab, root = len(bos_tokenizer), tmp_path_factory.mktemp("bos-models")
    torch.manual_seed(0)
    gemma3 = Gemma3ForCausalLM(Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=vocab, max_position_embeddings=256, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], bos_token_id=bos_tokenizer.bos_token_id))
    llama3 = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, max_position_embeddings=256, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=bos_tokenizer.bos_token_id))
    return {"gemma3": _save(gemma3, bos_tokenizer, root / "gemma3"),
            "llama3": _save(llama3, bos_tokenizer, root / "llama3")}


@pytest.fixture
def fed_ids(monkeypatch) -> list[torch.Tensor]:
    """Every (B, T) batch of token ids any model's input embedding sees during the test."""
    seen: list[torch.Tensor] = []
    original = nn.Embedding.forward

    def recording(self, input):  # noqa: A002 - nn.Embedding's own argument name
        # (the perplexity module's once-per-model check of its chunked head runs on CHECK_TOKENS tokens)
        if input.dim() == 2 and not input.dtype.is_floating_point and input.shape[1] != ppl_module.CHECK_TOKENS:
            seen.append(input.detach().cpu().clone())
        return original(self, input)

    monkeypatch.setattr(nn.Embedding, "forward", recording)
    return seen


# ---------------------------------------------------------------- the rule
def test_auto_follows_the_tokenizer(smollm_tokenizer, bos_tokenizer):
    assert windowing_for(smollm_tokenizer, "auto") == NO_BOS  # SmolLM2's tokenizer adds no BOS
    rule = windowing_for(bos_tokenizer, "auto")
    assert rule == Windowing("window", bos_tokenizer.bos_token_id)
    assert windowing_for(bos_tokenizer, "none") == NO_BOS
    assert windowing_for(bos_tokenizer, "stream").bos == "stream"
    assert windowing_for(smollm_tokenizer, "window").bos_id == smollm_tokenizer.bos_token_id  # asked for: obeyed
    with pytest.raises(UserError, match="--bos must be one of"):
        windowing_for(bos_tokenizer, "always")


def _old_calibration_windows(tokens, nsamples, seqlen, seed):
    """The windows before the BOS rule existed (kept here as the reference for "unchanged")."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.shape[-1] - seqlen, (nsamples,), generator=generator)
    flat = tokens.reshape(-1)
    return torch.stack([flat[s: s + seqlen] for s in starts.tolist()])


def _old_test_windows(tokens, seqlen, max_tokens=None):
    flat = tokens.reshape(-1)
    if max_tokens is not None:
        flat = flat[:max_tokens]
    n = flat.numel() // seqlen
    return flat[: n * seqlen].view(n, seqlen)


def test_without_bos_windows_are_unchanged_bit_for_bit(smollm_tokenizer):
    from prunerzero.data import load_text

    tokens = tokenize(smollm_tokenizer, load_text("lambada", "calib")[:200_000])
    rule = windowing_for(smollm_tokenizer, "auto")
    assert torch.equal(calibration_windows(tokens, 8, 64, 3, rule), _old_calibration_windows(tokens, 8, 64, 3))
    for max_tokens in (None, 1000, 64):
        assert torch.equal(eval_windows(tokens, 64, max_tokens, rule), _old_test_windows(tokens, 64, max_tokens))


def test_window_rule_puts_bos_first_and_keeps_the_text_order():
    tokens = torch.arange(10, 110).view(1, -1)  # 100 "text" tokens
    rule = Windowing("window", 1)
    windows = eval_windows(tokens, 8, None, rule)
    assert windows.shape == (100 // 7, 8) and (windows[:, 0] == 1).all()
    assert torch.equal(windows[:, 1:].reshape(-1), tokens.reshape(-1)[: windows.shape[0] * 7])  # consecutive text
    assert eval_windows(tokens, 8, 40, rule).shape == (5, 8)  # --eval-tokens counts windows of seqlen
    calib = calibration_windows(tokens, 6, 8, 0, rule)
    assert calib.shape == (6, 8) and (calib[:, 0] == 1).all()
    for row in calib:  # BOS + 7 consecutive text tokens
        assert torch.equal(row[1:], torch.arange(int(row[1]), int(row[1]) + 7))
    stream = Windowing("stream", 1)
    assert eval_windows(torch.cat([torch.tensor([[1]]), tokens], 1), 8, None, stream)[:, 0].tolist().count(1) == 1
    with pytest.raises(UserError, match="fewer than one window"):
        calibration_windows(tokens[:, :7], 1, 8, 0, rule)
    with pytest.raises(UserError, match="need at least 8 tokens"):
        eval_windows(tokens, 8, 7, rule)


def test_stream_rule_is_one_bos_before_the_whole_text(bos_tokenizer):
    rule = windowing_for(bos_tokenizer, "stream")
    ids = tokenize(bos_tokenizer, "the cat sat on the mat", rule)
    plain = tokenize(bos_tokenizer, "the cat sat on the mat")
    assert ids[0, 0] == bos_tokenizer.bos_token_id and torch.equal(ids[:, 1:], plain)


# ---------------------------------------------------------------- every path
def _assert_all_start_with_bos(batches: list[torch.Tensor], bos: int) -> None:
    assert batches, "no token ids reached the model"
    starts = torch.cat([b[:, 0] for b in batches])
    assert (starts == bos).all(), f"{int((starts != bos).sum())} of {starts.numel()} windows lack BOS"


@pytest.mark.parametrize("arch", ["gemma3", "llama3"])
def test_every_path_starts_each_window_with_bos(arch, bos_models, bos_tokenizer, fed_ids, tmp_path, monkeypatch):
    """prune (calibration, gradients, OWL, sequential pipeline, perplexity), eval, sweep and search
    (statistics, fitness, leaderboard) all feed BOS-first windows to a model whose tokenizer adds BOS."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    model, bos = str(bos_models[arch]), bos_tokenizer.bos_token_id
    small = ["--nsamples", "2", "--seqlen", "32"]
    assert main(["--quiet", "prune", "--model", model, "--method", "gblm", "--allocation", "owl", *small,
                 "--eval-data", "squad", "--eval-tokens", "128", "--save", str(tmp_path / "prune")]) == 0
    results = json.loads((tmp_path / "prune" / "results.json").read_text())
    assert results["windowing"] == {"bos": "window", "bos_token_id": bos}
    assert results["config"]["bos"] == "auto"
    _assert_all_start_with_bos(fed_ids, bos)

    fed_ids.clear()
    assert main(["--quiet", "eval", "--model", model, "--eval-data", "squad", "--eval-seqlen", "32",
                 "--eval-tokens", "128"]) == 0
    _assert_all_start_with_bos(fed_ids, bos)

    fed_ids.clear()
    assert main(["--quiet", "sweep", "--model", model, "--methods", "wanda,pruner-zero", "--sparsities", "0.5",
                 *small, "--eval-data", "squad", "--eval-tokens", "128", "--out", str(tmp_path / "sweep")]) == 0
    _assert_all_start_with_bos(fed_ids, bos)

    fed_ids.clear()
    assert main(["--quiet", "search", "--model", model, "--out", str(tmp_path / "search"), "--population", "4",
                 "--generations", "1", *small, "--fidelity-tokens", "64", "--report-data", "squad",
                 "--report-tokens", "64", "--leaderboard-top", "1", "--baselines", "wanda"]) == 0
    _assert_all_start_with_bos(fed_ids, bos)
    job = json.loads((tmp_path / "search" / "job.json").read_text())
    config = json.loads((tmp_path / "search" / "config.json").read_text())
    assert job["bos"] == "auto" and config["fitness"]["windowing"] == {"bos": "window", "bos_token_id": bos}


def test_bos_none_keeps_text_only_windows(bos_models, bos_tokenizer, fed_ids, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    assert main(["--quiet", "prune", "--model", str(bos_models["llama3"]), "--method", "wanda", "--bos", "none",
                 "--nsamples", "2", "--seqlen", "32", "--eval-data", "squad", "--eval-tokens", "128"]) == 0
    assert not any((b[:, 0] == bos_tokenizer.bos_token_id).any() for b in fed_ids)


def test_dense_perplexity_cache_is_per_rule(bos_models, tmp_path, monkeypatch, capsys):
    """A number cached under one rule is never reused under another."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    dense = {}
    for rule in ("window", "none", "window"):
        out = tmp_path / f"{rule}-{len(dense)}"
        assert main(["--quiet", "prune", "--model", str(bos_models["gemma3"]), "--method", "magnitude",
                     "--bos", rule, "--seqlen", "32", "--eval-data", "squad", "--eval-tokens", "128",
                     "--save", str(out)]) == 0
        dense.setdefault(rule, []).append(json.loads((out / "results.json").read_text())["dense"])
    assert dense["window"][0]["cached"] is False and dense["none"][0]["cached"] is False
    assert dense["window"][1]["cached"] is True and dense["window"][1]["ppl"] == dense["window"][0]["ppl"]
    assert dense["none"][0]["ppl"] != dense["window"][0]["ppl"]
    assert len(list((tmp_path / "cache" / "dense-ppl").glob("*.json"))) == 2


def test_gradient_cache_key_changes_with_the_rule(bos_models, tmp_path, monkeypatch):
    from prunerzero.calib.gradients.cache import _key_fields, cache_key
    from prunerzero.data import load_text
    from prunerzero.models import load_model

    lm = load_model(str(bos_models["llama3"]))
    text = load_text("lambada", "calib")[:50_000]
    keys = set()
    for mode in ("window", "none", "stream"):
        rule = windowing_for(lm.tokenizer, mode)
        ids = calibration_windows(tokenize(lm.tokenizer, text, rule), 2, 32, 0, rule)
        keys.add(cache_key(_key_fields(lm.model, ids, lm.path, "lambada", 0, 1, None)))
    assert len(keys) == 3  # the key hashes the windows' ids, and each rule cuts other windows


def test_bos_asked_of_a_tokenizer_without_one_is_one_line(no_bos_tokenizer_dir, tmp_path, capsys):
    for command in (["prune", "--method", "wanda", "--nsamples", "2", "--seqlen", "32", "--eval-data", "none",
                     "--save", str(tmp_path / "p")],
                    ["eval", "--eval-data", "squad", "--eval-seqlen", "32", "--eval-tokens", "64"]):
        assert main(["--quiet", command[0], "--model", str(no_bos_tokenizer_dir), "--bos", "window",
                     *command[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "has no BOS token" in err
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit) as exited:
        main(["--quiet", "eval", "--model", str(no_bos_tokenizer_dir), "--bos", "sometimes"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- chunked loss
def _tiny(arch: str, **overrides) -> nn.Module:
    from conftest import build_tiny_model

    model = build_tiny_model(arch)
    for key, value in overrides.items():
        setattr(model.config, key, value)
    return model


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "opt", "gpt_neox", "qwen2"])
def test_chunked_loss_equals_full_logits(arch, calib_ids):
    model = _tiny(arch)
    full = _full_nll(model, calib_ids).view(calib_ids.shape[0], -1)
    for chunk_bytes in (1, 4 * 128 * 7, 2**30):  # one position per chunk, 7 per chunk, all at once
        got = token_nll(model, calib_ids, chunk_bytes=chunk_bytes)
        assert torch.allclose(got, full, rtol=1e-5, atol=1e-6)


def test_chunked_loss_applies_final_soft_capping(calib_ids):
    """Gemma-2 soft-caps the logits after the head; a wrong cap would move every NLL."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                                           final_logit_softcapping=0.5)).eval()
    assert ppl_module.head_chunking_ok(model)
    assert torch.allclose(token_nll(model, calib_ids, chunk_bytes=1000),
                          _full_nll(model, calib_ids).view(calib_ids.shape[0], -1), rtol=1e-5)


def test_unknown_after_head_step_falls_back_to_full_logits(calib_ids, caplog):
    model = _tiny("llama")
    original = type(model).forward

    def doubled(self, *args, **kwargs):  # a model that scales its logits in a way we do not know
        out = original(self, *args, **kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = doubled.__get__(model)
    assert not ppl_module.head_chunking_ok(model)
    assert "full logits" in caplog.text
    assert torch.allclose(token_nll(model, calib_ids), _full_nll(model, calib_ids).view(calib_ids.shape[0], -1))


def test_chunked_logits_hold_at_most_the_budget():
    model = _tiny("llama")
    ids = torch.randint(0, 128, (2, 40))
    rows = [logits.shape[0] for _, logits in chunked_logits(model, ids, chunk_bytes=4 * 128 * 10)]
    assert max(rows) == 10 and sum(rows) == 2 * 39


def test_perplexity_records_the_rule_and_counts_windows():
    model = _tiny("llama")
    tokens = torch.randint(2, 128, (1, 500))
    none = perplexity(model, tokens, 32, 256, progress=False)
    window = perplexity(model, tokens, 32, 256, progress=False, windowing=Windowing("window", 1))
    assert none["windows"] == window["windows"] == 8 and none["bos"] == "none" and window["bos"] == "window"
    assert none["ppl"] != window["ppl"]
