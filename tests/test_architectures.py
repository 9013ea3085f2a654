"""End-to-end pruning on tiny randomly initialised models of every supported architecture family.

For each of LLaMA, Qwen2, Mistral, Gemma, Gemma-3 (sliding + global layers), OPT, GPT-2 (Conv1D)
and GPT-NeoX:
  (a) replaying the decoder layers one by one with the captured call arguments reproduces the
      model's own forward pass, layer by layer (in transformers 5 `hidden_states` holds the
      embeddings, the outputs of layers 0..L-2, and then the last layer's output AFTER the final
      norm, so the last one is compared after applying that norm);
  (b) magnitude, Wanda and SparseGPT reach the exact target on every decoder linear (50 %
      unstructured and 2:4), touch nothing else, and leave a model that still gives finite logits;
  (c) both within-layer orders ("sequential" one-pass, "parallel" two-pass) work.
"""
from __future__ import annotations

import pytest
import torch

from conftest import GEMMA3_LAYER_TYPES, SLIDING_WINDOW, TINY_VOCAB, build_tiny_model
from prunerzero.calib.capture import capture_layer_inputs, run_layer
from prunerzero.masks import parse_target
from prunerzero.methods import get_method
from prunerzero.models import find_decoder_layers, find_linears, weight_matrix
from prunerzero.pipeline import prune_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _decoder_weights(model) -> dict[str, torch.Tensor]:
    """Full parameter name -> weight of every prunable decoder linear."""
    layers_name, layers = find_decoder_layers(model)
    return {f"{layers_name}.{i}.{n}.weight": m.weight for i, layer in enumerate(layers) for n, m in find_linears(layer).items()}


def _replay(model, ids: torch.Tensor, batch_size: int):
    _, layers = find_decoder_layers(model)
    captured = capture_layer_inputs(model, layers, ids, batch_size)
    hidden = captured.hidden
    outputs = [torch.cat(hidden)]
    for i, layer in enumerate(layers):
        hidden = run_layer(layer, hidden, captured.calls[i])
        outputs.append(torch.cat(hidden))
    return captured, outputs  # outputs[0] = first layer's input, outputs[i + 1] = layer i's output


# ----------------------------------------------------------------- (a) replay == model forward

@pytest.mark.parametrize("batch_size", [4, 3])  # one batch; two uneven batches
def test_layer_replay_matches_model_forward(tiny_arch, calib_ids, batch_size):
    model = build_tiny_model(tiny_arch.name)
    with torch.no_grad():
        ref = model(input_ids=calib_ids, output_hidden_states=True, use_cache=False).hidden_states
    _, outputs = _replay(model, calib_ids, batch_size)
    n_layers = len(outputs) - 1
    assert len(ref) == n_layers + 1
    for i in range(n_layers):  # embeddings and every layer output but the last
        torch.testing.assert_close(outputs[i], ref[i], rtol=1e-5, atol=1e-5, msg=f"hidden state {i}")
    final_norm = model.get_submodule(tiny_arch.final_norm)
    with torch.no_grad():
        torch.testing.assert_close(final_norm(outputs[-1]), ref[-1], rtol=1e-5, atol=1e-5)


def test_gemma3_sliding_and_global_layers_get_their_own_masks(calib_ids):
    """With seqlen 32 > window 16 the sliding layers' mask differs from the global one; each layer
    must replay with its own. Swapping the arguments must change the output (the check has teeth)."""
    model = build_tiny_model("gemma3")
    assert calib_ids.shape[1] > SLIDING_WINDOW
    _, layers = find_decoder_layers(model)
    captured, outputs = _replay(model, calib_ids, 4)
    sliding = GEMMA3_LAYER_TYPES.index("sliding_attention")
    full = GEMMA3_LAYER_TYPES.index("full_attention")
    call_s, call_f = captured.calls[sliding][0], captured.calls[full][0]
    assert call_s.kwargs is not call_f.kwargs
    with torch.no_grad():
        wrong = call_f.run(layers[sliding], outputs[sliding])
        right = call_s.run(layers[sliding], outputs[sliding])
    torch.testing.assert_close(right, outputs[sliding + 1])
    assert (wrong - right).abs().max() > 1e-3

    # sanity: the model itself really is sensitive to the window (a config with no sliding
    # layers gives a different final state)
    with torch.no_grad():
        ref = model(input_ids=calib_ids, output_hidden_states=True).hidden_states[-1]
        model.config.sliding_window = 4096
        for layer in layers:
            if getattr(layer.self_attn, "sliding_window", None):
                layer.self_attn.sliding_window = 4096
        other = model(input_ids=calib_ids, output_hidden_states=True).hidden_states[-1]
    assert (ref - other).abs().max() > 1e-3


# ----------------------------------------------------------------- (b) end-to-end pruning

def _check_pruned(model, before: dict[str, torch.Tensor], report, target) -> None:
    layers_name, layers = find_decoder_layers(model)
    decoder = _decoder_weights(model)
    # every prunable decoder linear: exactly the target, in (out, in) orientation
    seen = []
    for i, layer in enumerate(layers):
        for name, module in find_linears(layer).items():
            w = weight_matrix(module)
            zeros = w == 0
            full = f"{layers_name}.{i}.{name}"
            seen.append(full)
            assert int(zeros.sum()) == w.numel() // 2, full
            if target.structured:
                per_group = zeros.reshape(w.shape[0], -1, target.m).sum(-1)
                assert bool((per_group == target.n).all()), full
            assert torch.isfinite(w).all(), full
    # the report covers exactly those linears and agrees with the weights
    assert sorted(row["name"] for row in report.layers) == sorted(seen)
    for row in report.layers:
        assert row["pruned"] == row["numel"] // 2 and row["sparsity"] == 0.5, row["name"]
    assert report.sparsity == 0.5
    # nothing else changed: embeddings, lm_head, norms, biases, position embeddings
    for name, param in model.named_parameters():
        if name in decoder:
            continue
        assert torch.equal(param, before[name]), f"{name} changed"
    assert any("embed" in n or "wte" in n for n in before)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_end_to_end(tiny_arch, calib_ids, method, pattern):
    model = build_tiny_model(tiny_arch.name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not any(bool((p == 0).any()) for p in _decoder_weights(model).values())  # dense to start
    target = parse_target(0.5, pattern)
    report = prune_model(model, get_method(method), target, calib_ids, progress=False)
    assert report.within_layer == ("none" if method == "magnitude" else "sequential")
    _check_pruned(model, before, report, target)
    lm_head = model.get_output_embeddings().weight
    lm_name = next(n for n, p in model.named_parameters() if p is lm_head)  # may be the tied embedding
    assert torch.equal(lm_head, before[lm_name])
    with torch.no_grad():
        logits = model(input_ids=calib_ids, use_cache=False).logits
    assert logits.shape == (*calib_ids.shape, TINY_VOCAB)
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------- (c) within-layer order

@pytest.mark.parametrize("within_layer, batch_size", [("sequential", 8), ("parallel", 3)])  # 3: uneven batches
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_within_layer_orders(tiny_arch, calib_ids, method, within_layer, batch_size):
    model = build_tiny_model(tiny_arch.name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = parse_target(0.5)
    report = prune_model(model, get_method(method), target, calib_ids, batch_size=batch_size,
                         within_layer=within_layer, progress=False)
    assert report.within_layer == within_layer
    _check_pruned(model, before, report, target)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=calib_ids).logits).all()


def test_parallel_masks_do_not_depend_on_batch_split(calib_ids):
    """Two-pass statistics accumulate over batches: one batch of 4 or batches of 3 + 1 give the
    same Wanda masks."""
    masks = []
    for batch_size in (4, 3):
        model = build_tiny_model("llama")
        prune_model(model, get_method("wanda"), parse_target(0.5), calib_ids, batch_size=batch_size,
                    within_layer="parallel", progress=False)
        masks.append({n: w == 0 for n, w in _decoder_weights(model).items()})
    for name in masks[0]:
        assert torch.equal(masks[0][name], masks[1][name]), name


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_pass_masks_do_not_depend_on_batch_split(tiny_arch, calib_ids, method):
    """One-pass pruning runs its batches in lockstep: one batch of 4, batches of 3 + 1 or four of
    1 give the same masks, and weights equal up to float32 rounding of the summed statistics."""
    results = {}
    for batch_size in (4, 3, 1):
        model = build_tiny_model(tiny_arch.name)
        report = prune_model(model, get_method(method), parse_target(0.5), calib_ids, batch_size=batch_size,
                             within_layer="sequential", progress=False)
        assert report.within_layer == "sequential"
        results[batch_size] = _decoder_weights(model)
    for batch_size in (3, 1):
        for name, w in results[batch_size].items():
            assert torch.equal(w == 0, results[4][name] == 0), (batch_size, name)
            torch.testing.assert_close(w, results[4][name], rtol=1e-4, atol=1e-5)


def test_sequential_and_parallel_differ_only_after_the_first_pruned_linear(calib_ids):
    """In a layer's first linears (q/k/v read the same normed input) both orders see identical
    statistics, so Wanda's masks agree there; later linears see pruned inputs in sequential mode."""
    results = {}
    for order in ("sequential", "parallel"):
        model = build_tiny_model("llama")
        prune_model(model, get_method("wanda"), parse_target(0.5), calib_ids, within_layer=order, progress=False)
        results[order] = {n: w == 0 for n, w in _decoder_weights(model).items()}
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        assert torch.equal(results["sequential"][name], results["parallel"][name]), name
    down = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(results["sequential"][down], results["parallel"][down])


def test_magnitude_needs_no_calibration_data():
    model = build_tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = parse_target(0.5, "2:4")
    report = prune_model(model, get_method("magnitude"), target, None, progress=False)
    _check_pruned(model, before, report, target)


def test_calibrated_methods_need_calibration_data():
    model = build_tiny_model("llama")
    with pytest.raises(ValueError, match="calibration"):
        prune_model(model, get_method("wanda"), parse_target(0.5), None, progress=False)


def test_per_layer_targets(calib_ids):
    """A callable target gives each decoder layer its own sparsity."""
    model = build_tiny_model("llama")
    targets = {0: parse_target(0.25), 1: parse_target(0.75)}
    report = prune_model(model, get_method("sparsegpt"), lambda i: targets[i], calib_ids, progress=False)
    _, layers = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        for name, module in find_linears(layer).items():
            w = weight_matrix(module)
            assert int((w == 0).sum()) == round(w.numel() * targets[i].sparsity), f"{i}.{name}"
    assert report.sparsity == pytest.approx(0.5)


def test_auto_order_falls_back_to_parallel_for_many_tokens(calib_ids):
    model = build_tiny_model("llama")
    report = prune_model(model, get_method("wanda"), parse_target(0.5), calib_ids, batch_size=2,
                         one_pass_max_tokens=calib_ids.numel() - 1, progress=False)
    assert report.within_layer == "parallel"
    with pytest.raises(ValueError, match="within_layer"):
        prune_model(build_tiny_model("llama"), get_method("wanda"), parse_target(0.5), calib_ids,
                    within_layer="diagonal", progress=False)


# ----------------------------------------------------------------- (d) gated MLPs in token chunks

@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma", "gemma3"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_pass_with_chunked_gated_mlps_prunes_as_without(arch, method, calib_ids, monkeypatch):
    """One-pass pruning runs gated MLPs 24 tokens at a time (128 calibration tokens: 5 full chunks
    and a short one): the same masks and weights as the whole batch at once, and every MLP's own
    forward is back afterwards."""
    from prunerzero.calib import gated_mlp

    results, calls = {}, []
    original = gated_mlp._chunked_forward

    def counting(*a, **k):
        calls.append(a[1]["down_proj"])
        return original(*a, **k)

    monkeypatch.setattr(gated_mlp, "_chunked_forward", counting)
    for chunk in (24, 10**9):
        monkeypatch.setattr(gated_mlp, "CHUNK_TOKENS", chunk)
        model = build_tiny_model(arch)
        prune_model(model, get_method(method), parse_target(0.5), calib_ids, within_layer="sequential", progress=False)
        results[chunk] = _decoder_weights(model)
        assert not any("forward" in m.__dict__ for m in model.modules() if gated_mlp.is_gated_mlp(type(m)))
    assert calls, "no gated MLP was chunked"
    for name, w in results[24].items():
        assert torch.equal(w == 0, results[10**9][name] == 0), name
        torch.testing.assert_close(w, results[10**9][name], rtol=1e-5, atol=1e-6)


def test_only_mlps_whose_forward_is_the_gated_line_are_chunked():
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.phi3.modeling_phi3 import Phi3MLP

    from prunerzero.calib.gated_mlp import is_gated_mlp

    class LoggingMLP(LlamaMLP):
        def forward(self, x):
            down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
            print("seen")
            return down_proj

    assert is_gated_mlp(LlamaMLP)
    assert not is_gated_mlp(GPT2MLP) and not is_gated_mlp(Phi3MLP) and not is_gated_mlp(LoggingMLP)
