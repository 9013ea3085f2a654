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


@dataclass(frozen=True)
class Setup:
    arch: Arch
    gpus: int = 1
    gpu_gib: float = 80e9 / GiB  # an "80 GB" card holds 74.5 GiB
    nsamples: int = 128
    batch: int = 8  # calibration forward batch (--batch-size)
    eval_batch: int = 4  # perplexity windows per forward
    weight_bytes: int = 2  # float16 / bfloat16


def plan(s: Setup, act: dict[str, float], chunk: int | None) -> dict[str, float]:
    """Peak bytes of each step on the busiest GPU (layers spread evenly over s.gpus), plus CPU and disk.

    Formulas (b = bytes per weight, P = all weights, P_l = prunable weights of one layer,
    n = samples, T = window, h / i / V = hidden / MLP / vocabulary widths, L = layers, N = GPUs,
    S_in / S_after / S_head = saved activations per layer in / after the gradient chunk and of the
    head, counted by per_layer()):
      weights                  b*P / N
      calibration (per layer)  2*n*T*h*b  (layer inputs and outputs)  + B*T*(4h + 3i)*b (one batch
                               through the layer) + 4*(3h^2 + i^2) (SparseGPT's H; Wanda: ~0) +
                               SparseGPT's work on the widest linear, 4*h*i + 8*i^2
      gradients, all at once   b*P/N + (L/N)*S_in + S_head + 3*4*T*V (loss) + b*h*i (one gradient);
                               CPU: 8*P_prunable (float32 l1 and sum g^2)
      gradients, chunks of k   b*P/N + k*S_in + (L/N - k)*S_after + S_head + 3*4*T*V + 8*k*P_l
                               (the chunk's accumulators on its GPU); CPU: one tensor at a time
                               while a chunk is saved; disk: 8*P_prunable (the cached file)
      perplexity               b*P/N + E*T*V*(b + 8) (logits, float32 copy, log-softmax) + E*T*(4h + 3i)*b
    """
    a, b, n, T = s.arch, s.weight_bytes, s.nsamples, s.arch.seqlen
    h, i, V, L, N = a.hidden, a.intermediate, a.vocab, a.layers, s.gpus
    p = params(a)
    P, P_l, per_gpu_layers = p["total"], p["layer_linear"], L / N
    weights = b * P / N
    hidden = 2 * n * T * h * b
    batch_fwd = s.batch * T * (4 * h + 3 * i) * b
    sparsegpt = 4 * (3 * h * h + i * i) + 4 * h * i + 8 * i * i
    loss = 3 * 4 * T * V
    out = {
        "weights": weights,
        "calibration, Wanda": weights + hidden + batch_fwd + 3 * 4 * h * i,
        "calibration, SparseGPT": weights + hidden + batch_fwd + sparsegpt,
        "gradients, all layers (sums on CPU)": weights + per_gpu_layers * act["layer_in_chunk"] + act["head"] + loss
        + b * h * i,
        "perplexity": weights + s.eval_batch * T * V * (b + 8) + s.eval_batch * T * (4 * h + 3 * i) * b,
        "cpu: G sums, all layers": 8 * p["prunable"],
        "disk: G cache file": 8 * p["prunable"],
    }
    if chunk is not None:
        k_here = min(chunk, per_gpu_layers)
        out[f"gradients, chunks of {chunk} (sums on GPU)"] = (
            weights + k_here * act["layer_in_chunk"] + (per_gpu_layers - k_here) * act["layer_after_chunk"]
            + act["head"] + loss + 8 * k_here * P_l)
        out["cpu: largest tensor of a chunk, while saved"] = 4 * h * i
    return out


def search_plan(s: Setup, reconstruct: bool) -> dict[str, float]:
    """Peak bytes of `prunerzero search` (serial executor, layers spread evenly over s.gpus).

    GPU: the weights, the fitness's dense copies of every prunable weight in the model's dtype
    (b*P_prunable / N: each candidate starts from them), one linear's float32 weight, score and mask
    (12*h*i), and a perplexity forward at the search window. With --reconstruct obs: each linear's
    float32 inverse-Hessian factor, kept for the run (4*(3h^2 + i^2) per layer: one for q, k, v, one
    for o, one for gate and up, which read the same input, h wide, and one for down, i wide), plus the OBS sweep's work on the widest linear (4*h*i + 8*i^2).
    CPU: the run's statistics, loaded whole: G (8*P_prunable) and, with --reconstruct obs, the
    Hessians (4*L*(6h^2 + i^2)). Disk: stats.safetensors in the run folder (the same bytes) and the
    gradient cache (8*P_prunable)."""
    a, b, T = s.arch, s.weight_bytes, s.arch.seqlen
    h, i, V, L, N = a.hidden, a.intermediate, a.vocab, a.layers, s.gpus
    p = params(a)
    hessians = 4 * L * (6 * h * h + i * i)  # one per linear on the CPU, as saved
    gpu = (b * p["total"] + b * p["prunable"]) / N + 12 * h * i + s.eval_batch * T * V * (b + 8) \
        + s.eval_batch * T * (4 * h + 3 * i) * b
    if reconstruct:
        gpu += 4 * L * (3 * h * h + i * i) / N + 4 * h * i + 8 * i * i
    cpu = 8 * p["prunable"] + (hessians if reconstruct else 0)
    return {"gpu": gpu, "cpu": cpu, "disk": cpu + 8 * p["prunable"]}


def largest_chunk(s: Setup, act: dict[str, float], headroom: float = 0.9) -> int:
    """The most decoder layers per gradient chunk that keep the busiest GPU under headroom x its memory."""
    best = 0
    for k in range(1, s.arch.layers + 1):
        peak = plan(s, act, k)[f"gradients, chunks of {k} (sums on GPU)"]
        if peak <= headroom * s.gpu_gib * GiB:
            best = k
    return best


def balanced_chunk(s: Setup, act: dict[str, float]) -> int:
    """The fewest chunks the memory allows, then the fewest layers per GPU per chunk for that count."""
    k_max = largest_chunk(s, act)
    if k_max == 0:
        return 0
    per_gpu = -(-s.arch.layers // s.gpus)
    n_chunks = -(-per_gpu // k_max)
    return -(-per_gpu // n_chunks)


SETUPS = [Setup(ARCHS[0]), Setup(ARCHS[1]), Setup(ARCHS[2]), Setup(ARCHS[3]), Setup(ARCHS[4], gpus=4),
          Setup(ARCHS[4], gpus=8), Setup(ARCHS[5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlen", type=int, default=None, help="override every model's window")
    args = ap.parse_args()
    print("| model | T | params (prunable) | weights, 2 B each | saved per layer in chunk | per layer after chunk | "
          "head + loss | math-path attention per layer (not on CUDA) |")
    print("|---|---|---|---|---|---|---|---|")
    acts = {}
    for arch in ARCHS:
        t = args.seqlen or arch.seqlen
        p, a = params(arch), per_layer(arch, t)
        acts[arch.name] = a
        print(f"| {arch.name} | {t} | {p['total'] / 1e9:.2f} B ({p['prunable'] / 1e9:.2f} B) | "
              f"{2 * p['total'] / GiB:.1f} GiB | {a['layer_in_chunk'] / GiB:.3f} GiB | "
              f"{a['layer_after_chunk'] / GiB:.3f} GiB | {a['head'] / GiB:.2f} GiB | "
              f"{a['math_attention'] / GiB:.2f} GiB |")
    print()
    for s in SETUPS:
        act = acts[s.arch.name]
        k = balanced_chunk(s, act)
        per_gpu = -(-s.arch.layers // s.gpus)
        print(f"{s.arch.name}, T={s.arch.seqlen}, {s.gpus} x 80 GB, n={s.nsamples}: --grad-chunk-layers {k} "
              f"({-(-per_gpu // k) if k else '-'} chunks; at most {largest_chunk(s, act)} fit in 90%)")
        for step, value in plan(s, act, k or None).items():
            print(f"    {step:42s} {value / GiB:8.1f} GiB")
    print()
    print("Search (serial executor, GiB; the search window = the model's T):")
    print("| model | GPUs | GPU, busiest | CPU | disk | GPU with --reconstruct obs | CPU | disk |")
    print("|---|---|---|---|---|---|---|---|")
    for s in SETUPS:
        plain, obs = search_plan(s, False), search_plan(s, True)
        print(f"| {s.arch.name} | {s.gpus} | {plain['gpu'] / GiB:.1f} | {plain['cpu'] / GiB:.1f} | "
              f"{plain['disk'] / GiB:.1f} | {obs['gpu'] / GiB:.1f} | {obs['cpu'] / GiB:.1f} | {obs['disk'] / GiB:.1f} |")


if __name__ == "__main__":
    main()
