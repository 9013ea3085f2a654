"""Memory of each step of pruning LLaMA-size models, counted without any GPU or weights.

Builds each architecture on the `meta` device (shapes only, no memory), runs one calibration
sample forward with gradients enabled for the weights a gradient chunk covers, and adds up the
bytes autograd saves for the backward pass (torch's saved-tensor hooks; views of one tensor are
counted once, parameters not at all). What the attention kernel saves is reported apart: on CUDA, PyTorch's
SDPA uses the flash / memory-efficient kernels, which keep only q, k, v, the output and a
logsumexp (added here by formula), while the meta device takes the math path that also keeps the
(heads, T, T) probabilities.

    python bench/large_model_memory.py            # prints the tables used in docs/LARGE_MODELS.md
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GiB = 2**30


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    seqlen: int  # the papers' calibration window for this model


ARCHS = [
    Arch("LLaMA-7B", 4096, 11008, 32, 32, 32, 32000, 2048),
    Arch("LLaMA-13B", 5120, 13824, 40, 40, 40, 32000, 2048),
    Arch("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, 4096),
    Arch("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, 4096),
    Arch("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000, 4096),
    Arch("Llama-3-8B", 4096, 14336, 32, 32, 8, 128256, 4096),
]


def _config(arch: Arch):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=arch.hidden, intermediate_size=arch.intermediate, num_hidden_layers=1,
                       num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, vocab_size=arch.vocab,
                       max_position_embeddings=8192, attn_implementation="sdpa")


def _count_saved(run, params: list[torch.Tensor]) -> dict[str, float]:
    """Bytes autograd saves while `run()` executes (parameters, which exist anyway, left out), split
    into what the attention kernel saves (meta takes SDPA's math path) and the rest."""
    seen: dict[int, torch.Tensor] = {id(p): p for p in params}
    totals = {"attention_kernel": 0.0, "other": 0.0}
    inside = {"sdpa": False}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in seen:
            seen[id(base)] = base  # kept alive so ids are not reused
            totals["attention_kernel" if inside["sdpa"] else "other"] += base.numel() * base.element_size()
        return t

    sdpa = F.scaled_dot_product_attention

    def marked_sdpa(*args, **kwargs):
        inside["sdpa"] = True
        try:
            return sdpa(*args, **kwargs)
        finally:
            inside["sdpa"] = False

    F.scaled_dot_product_attention = marked_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        F.scaled_dot_product_attention = sdpa
    return totals


def per_layer(arch: Arch, seqlen: int) -> dict[str, float]:
    """Saved bytes (bf16 model, one sample of `seqlen` tokens) of one decoder layer whose weights
    need gradients, of one that only passes gradients on, and of the head (final norm, lm_head,
    float32 logits, loss). Counted on the meta device: shapes only."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    cfg = _config(arch)
    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, 0).to(torch.bfloat16)
        norm = LlamaRMSNorm(arch.hidden).to(torch.bfloat16)
        head = torch.nn.Linear(arch.hidden, arch.vocab, bias=False).to(torch.bfloat16)
        rotary = LlamaRotaryEmbedding(cfg)
    for p in [*layer.parameters(), *norm.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    positions = torch.arange(seqlen, device="meta")[None]
    x = torch.zeros(1, seqlen, arch.hidden, device="meta", dtype=torch.bfloat16)
    cos, sin = rotary(x, positions)

    def run_layer() -> None:
        layer(x.clone().requires_grad_(True), position_embeddings=(cos, sin), attention_mask=None)

    params = [*layer.parameters(), *norm.parameters(), *head.parameters()]
    after = _count_saved(run_layer, params)
    for m in layer.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.requires_grad_(True)
    inside = _count_saved(run_layer, params)
    ids = torch.zeros(1, seqlen, dtype=torch.long, device="meta")

    def run_head() -> None:
        logits = head(norm(x.clone().requires_grad_(True)))
        F.cross_entropy(logits[:, :-1].float().reshape(-1, arch.vocab), ids[:, 1:].reshape(-1))

    # CUDA's flash / memory-efficient SDPA saves q, k, v, the output (bf16) and a float32 logsumexp
    # per head and token instead of the math path's (heads, T, T) probabilities.
    kv = arch.hidden * arch.kv_heads // arch.heads
    flash = (2 * seqlen * arch.hidden + 2 * seqlen * kv) * 2 + arch.heads * seqlen * 4
    return {"layer_in_chunk": inside["other"] + flash, "layer_after_chunk": after["other"] + flash,
            "head": _count_saved(run_head, params)["other"], "math_attention": inside["attention_kernel"]}


def params(arch: Arch) -> dict[str, float]:
    h, i, kv = arch.hidden, arch.intermediate, arch.hidden * arch.kv_heads // arch.heads
    layer_linear = h * h * 2 + h * kv * 2 + 3 * h * i  # q, o + k, v + gate, up, down
    return {"layer_linear": layer_linear, "prunable": layer_linear * arch.layers,
            "total": layer_linear * arch.layers + 2 * arch.vocab * h + (2 * arch.layers + 1) * h}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=int, default=None, help="override every model's window")
    args = ap.parse_args()
    print("| model | T | params (prunable) | weights, 2 B each | saved per layer in chunk | per layer after chunk | head + loss | math-path attention per layer (not on CUDA) |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in ARCHS:
        t = args.seqlen or arch.seqlen
        p, a = params(arch), per_layer(arch, t)
        print(f"| {arch.name} | {t} | {p['total'] / 1e9:.2f} B ({p['prunable'] / 1e9:.2f} B) | "
              f"{2 * p['total'] / GiB:.1f} GiB | {a['layer_in_chunk'] / GiB:.3f} GiB | "
              f"{a['layer_after_chunk'] / GiB:.3f} GiB | {a['head'] / GiB:.2f} GiB | "
              f"{a['math_attention'] / GiB:.2f} GiB |")


if __name__ == "__main__":
    main()
