"""Gradient statistics: exact per-sample semantics, cache, resume, file loading, no side effects.

Tiny random models keep this fast: a LlamaForCausalLM (nn.Linear) and a GPT2LMHeadModel, whose
Conv1D weights are stored (in, out) so their gradients must come out transposed.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from prunerzero.calib import gradients as G
from prunerzero.models import prunable_linears
from prunerzero.errors import UserError
from prunerzero.models import weight_matrix

VOCAB, N, T = 100, 5, 12


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(params=["llama", "gpt2"])
def model(request) -> torch.nn.Module:
    return _llama() if request.param == "llama" else _gpt2()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (N, T), generator=torch.Generator().manual_seed(1))  # (N, T)


def _per_sample_grads(model, ids) -> list[dict[str, torch.Tensor]]:
    """Independent reference: HF's own labels= loss, torch.autograd.grad per sample, (out, in)."""
    mods = prunable_linears(model)
    weights = [m.weight for m in mods.values()]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    out = []
    for row in ids:
        loss = model(input_ids=row[None], labels=row[None], use_cache=False).loss
        grads = torch.autograd.grad(loss, weights)
        out.append({name: g if isinstance(m, torch.nn.Linear) else g.t() for (name, m), g in zip(mods.items(), grads)})
    for w, f in zip(weights, flags):
        w.requires_grad_(f)
    return out


def _norms(grads: list[dict[str, torch.Tensor]]):
    return {k: (sum(g[k].abs() for g in grads), sum(g[k] ** 2 for g in grads).sqrt()) for k in grads[0]}


def _assert_same(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            if exact:
                assert torch.equal(x, y), k
            else:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


def test_matches_brute_force_per_sample(model, ids):
    stats = G.compute_gradient_stats(model, ids, progress=False)
    ref = _norms(_per_sample_grads(model, ids))
    _assert_same(stats, ref)
    for name, module in prunable_linears(model).items():
        l1, l2 = stats[name]
        assert l1.shape == l2.shape == weight_matrix(module).shape  # (out, in), Conv1D transposed
        assert l1.dtype == l2.dtype == torch.float32 and l1.device.type == "cpu"
        assert (l2 <= l1 + 1e-6).all() and l2.abs().sum() > 0  # ||.||_2 <= ||.||_1 over samples


def test_batched_is_norm_over_batch_gradients(ids):
    model = _llama()
    stats = G.compute_gradient_stats(model, ids[:4], batch_size=2, progress=False)
    g = _per_sample_grads(model, ids[:4])
    # equal lengths: the batch-mean loss's gradient is the mean of the per-sample gradients
    batch = [{k: (g[i][k] + g[i + 1][k]) / 2 for k in g[0]} for i in (0, 2)]
    _assert_same(stats, _norms(batch))


def test_flags_grads_mode_and_weights_restored(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    G.compute_gradient_stats(model, ids[:2], progress=False)
    assert model.training  # mode put back
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cache_hit_and_key(tmp_path, ids):
    model = _llama()
    kw = dict(model_id="tiny", data_id="rand", seed=0, cache=tmp_path, progress=False)
    s1, i1 = G.load_or_compute_gradients(model, ids, **kw)
    assert not i1["cached"] and i1["nsamples"] == N and i1["seqlen"] == T
    s2, i2 = G.load_or_compute_gradients(model, ids, **kw)
    assert i2["cached"] and i2["cache_file"] == i1["cache_file"]
    _assert_same(s1, s2, exact=True)
    _, i3 = G.load_or_compute_gradients(model, ids, **{**kw, "seed": 1})
    _, i4 = G.load_or_compute_gradients(model, ids[:, :-1], **kw)
    _, i5 = G.load_or_compute_gradients(model, ids, **{**kw, "data_id": "other"})
    assert len({i1["cache_file"], i3["cache_file"], i4["cache_file"], i5["cache_file"]}) == 4
    assert not (i3["cached"] or i4["cached"] or i5["cached"])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".safetensors")) == []


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, ids):
    model = _llama()
    full = G.compute_gradient_stats(model, ids, progress=False)
    kw = dict(model_id="tiny", data_id="rand", seed=0, cache=tmp_path, progress=False, checkpoint_every=2)

    def stop_after_3(done: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        G.load_or_compute_gradients(model, ids, on_progress=stop_after_3, **kw)
    key = next(tmp_path.glob("*.partial.safetensors")).name.split(".")[0]
    # the result file being filled, which layers in it are final, the running sums: no final file, no tmp file
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.chunk.safetensors", f"{key}.partial.safetensors",
                                                          f"{key}.progress.json"]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # restored on interrupt

    stats, info = G.load_or_compute_gradients(model, ids, **kw)
    assert info["resumed_from"] == 2 and not info["cached"]
    _assert_same(stats, full, exact=True)  # same samples, same float32 summation order
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]


def test_file_round_trip_and_mismatch(tmp_path, ids):
    model = _gpt2()
    stats, info = G.load_or_compute_gradients(model, ids[:2], model_id="g", data_id="d", seed=0,
                                              cache=tmp_path, progress=False)
    meta_keys = load_file(info["cache_file"]).keys()
    assert any(k.endswith(".l1") for k in meta_keys) and any(k.endswith(".l2") for k in meta_keys)
    _assert_same(G.load_gradient_file(info["cache_file"], model), stats, exact=True)

    other = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_inner=64, n_layer=2, n_head=4,
                                       n_positions=64))
    with pytest.raises(UserError, match=r"transformer\.h\.0\.mlp\.c_fc has shape \(128, 32\).*\(64, 32\)"):
        G.load_gradient_file(info["cache_file"], other)
    with pytest.raises(UserError, match="no l1 gradients"):
        G.load_gradient_file(info["cache_file"], _llama())
    with pytest.raises(UserError, match="not found"):
        G.load_gradient_file(tmp_path / "missing.safetensors", model)


def test_gblm_pruner_torch_file(tmp_path, ids):
    """GBLM-Pruner / Pruner-Zero: dict "<linear>_layer_<i>" -> float16 (100 * norm), one norm a file."""
    model = _llama()
    stats = G.compute_gradient_stats(model, ids[:2], progress=False)
    legacy = {}
    for name, (_, l2) in stats.items():
        _, _, i, linear = name.split(".", 3)  # "model", "layers", "0", "self_attn.q_proj"
        legacy[f"{linear}_layer_{i}"] = (l2 * 100).half()
    path = tmp_path / "gradients_aggregrate_norm_l2_model_tiny_128_0.pth"
    torch.save(legacy, path)
    loaded, info = G.read_gradient_file(path, model)
    assert info["norms"] == ["l2"] and info["scale_removed"] == 100.0
    for name, (l1, l2) in loaded.items():
        assert l1 is l2 or torch.equal(l1, l2)  # one norm fills both
        torch.testing.assert_close(l2, stats[name][1], rtol=2e-3, atol=1e-6)  # float16 rounding
    l1_path = tmp_path / "gradients_aggregrate_norm_l1_model_tiny.pth"
    torch.save(legacy, l1_path)
    assert G.read_gradient_file(l1_path, model)[1]["norms"] == ["l1"]

    first = next(iter(legacy))
    torch.save({**legacy, first: legacy[first][:, :-1]}, path)
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn\.q_proj has shape"):
        G.load_gradient_file(path, model)
    del legacy[first]
    torch.save(legacy, path)
    with pytest.raises(UserError, match=r"no l2 gradients for model\.layers\.0\.self_attn\.q_proj"):
        G.load_gradient_file(path, model)


def test_bad_ids():
    with pytest.raises(UserError):
        G.compute_gradient_stats(_llama(), torch.zeros(3, 1, dtype=torch.long), progress=False)
    with pytest.raises(UserError):
        G.compute_gradient_stats(_llama(), torch.zeros(3, 4), progress=False)
