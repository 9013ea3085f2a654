"""Large-model machinery on tiny models: weight dtypes, device maps, chunked gradients, config files.

What a CPU can show honestly:
  - bf16 weights: the pruning math still sees float32 weights and statistics, the weights stay
    bf16, the targets are met exactly and the masks agree with a float32 run;
  - device maps: a model whose decoder layers are offloaded to disk by accelerate (the same hooks
    that spread layers over GPUs) prunes to exactly the weights of a plain model, the pruned
    weights are written back to the offload store, and each layer call sends its inputs to the
    layer's device (checked with the `meta` device as the target, since a CPU has no second one);
  - chunked gradients equal unchunked ones, share their cache file and resume across chunkings;
  - `prune --config FILE.json`: precedence, bad keys and types, every shipped config valid.
The tests marked `gpu` run the same comparisons on CUDA (bf16 vs float32 masks, layers split over
two GPUs) and are skipped without it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import build_tiny_model
from prunerzero.allocation import owl_allocation
from prunerzero.calib import gradients as G
from prunerzero.calib.gradients import cache as gradient_cache
from prunerzero.calib.gradients import compute as gradient_compute
from prunerzero.calib.capture import LayerCall
from prunerzero.cli import build_parser, main
from prunerzero.config import PruneConfig
from prunerzero.errors import UserError
from prunerzero.masks import parse_target
from prunerzero.methods import get_method
from prunerzero.models import find_decoder_layers, find_linears, load_model, weight_matrix
from prunerzero.pipeline import collect_dense_stats, prune_model
from prunerzero.placement import module_device, send_to

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Spy:
    """A method that records what the pruning math is given, then lets the real method prune."""

    def __init__(self, method):
        self.method, self.name, self.needs, self.seen = method, method.name, method.needs, []

    def prune(self, weight, stats, target):
        self.seen.append((weight.dtype, None if stats.x_mean_sq is None else stats.x_mean_sq.dtype,
                          None if stats.hessian is None else stats.hessian.dtype))
        return self.method.prune(weight, stats, target)


def _masks(model) -> dict[str, torch.Tensor]:
    layers_name, layers = find_decoder_layers(model)
    return {f"{layers_name}.{i}.{n}": (weight_matrix(m) == 0).cpu()
            for i, layer in enumerate(layers) for n, m in find_linears(layer).items()}


def _agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    return same / sum(v.numel() for v in a.values())


# ----------------------------------------------------------------- weights in bf16

@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bf16_weights_prune_with_float32_math(calib_ids, method):
    reference = build_tiny_model("llama")
    prune_model(reference, get_method(method), parse_target(0.5), calib_ids, progress=False)
    model = build_tiny_model("llama").to(torch.bfloat16)
    spy = Spy(get_method(method))
    report = prune_model(model, spy, parse_target(0.5), calib_ids, progress=False)
    assert spy.seen and all(w == torch.float32 for w, _, _ in spy.seen)  # the math: float32 ...
    assert all(torch.float32 in (x, h) for _, x, h in spy.seen)  # ... statistics too
    for name, mask in _masks(model).items():
        assert weight_matrix(model.get_submodule(name)).dtype == torch.bfloat16, name  # stored as loaded
        assert int(mask.sum()) == mask.numel() // 2, name  # counted in the stored bf16 weights
    assert report.sparsity == 0.5
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=calib_ids).logits).all()
    assert _agreement(_masks(model), _masks(reference)) > 0.98  # bf16 activations move only near-ties (0.997 here)


# ----------------------------------------------------------------- device placement

def test_layer_call_sends_every_input_to_the_layers_device():
    seen = {}

    class Recorder(nn.Module):
        def forward(self, hidden, mask=None, position_embeddings=None, flag=None):
            seen.update(hidden=hidden.device, mask=mask.device, cos=position_embeddings[0].device, flag=flag)
            return (hidden,)

    hidden, mask, cos = torch.zeros(1, 3, 4), torch.ones(1, 3), torch.zeros(3, 2)
    call = LayerCall((), {"mask": mask, "position_embeddings": (cos, cos), "flag": "kept"})
    out = call.run(Recorder(), hidden, torch.device("meta"))  # a CPU has no second device: meta stands in
    assert seen == {"hidden": torch.device("meta"), "mask": torch.device("meta"), "cos": torch.device("meta"),
                    "flag": "kept"}
    assert out.device.type == "meta"
    assert send_to(hidden, torch.device("cpu")) is hidden  # already there: no copy
    layer = nn.Linear(2, 2)
    assert module_device(layer) == torch.device("cpu")
    assert module_device(layer.to("meta")) == torch.device("cpu")  # no real weights: the CPU


def _offloaded(model_dir: Path, folder: Path):
    """The tiny Llama with decoder layer 1 offloaded to disk: accelerate's hooks load it per call."""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return load_model(str(model_dir), device_map=device_map, offload_folder=str(folder)).model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_disk_offloaded_layers_prune_like_a_plain_model(tiny_model_dir, tmp_path, method):
    from accelerate.utils import align_module_device

    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    plain = load_model(str(tiny_model_dir)).model
    model = _offloaded(tiny_model_dir, tmp_path / "offload")
    layer1 = find_decoder_layers(model)[1][1]
    assert layer1.mlp.down_proj.weight.device.type == "meta" and hasattr(layer1, "_hf_hook")
    hooked_forward = layer1.__dict__["forward"]  # accelerate's wrapper

    plain_report = prune_model(plain, get_method(method), parse_target(0.5), ids, progress=False)
    report = prune_model(model, get_method(method), parse_target(0.5), ids, progress=False)
    assert layer1.__dict__["forward"] is hooked_forward  # capture put accelerate's hook back
    assert layer1.mlp.down_proj.weight.device.type == "meta"  # still offloaded after pruning
    assert report.layers == plain_report.layers
    reference = dict(plain.named_parameters())
    for i, layer in enumerate(find_decoder_layers(model)[1]):
        for name, module in find_linears(layer).items():
            with align_module_device(module):  # what the offload store now holds
                assert torch.equal(module.weight, reference[f"model.layers.{i}.{name}.weight"]), (i, name)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)

    stats = collect_dense_stats(model, ids, frozenset({"X"}), progress=False)
    assert all(s.x_mean_sq.device.type == "cpu" for s in stats.values())
    plain_stats = collect_dense_stats(plain, ids, frozenset({"X"}), progress=False)
    assert owl_allocation(model, stats, 0.5, 5.0, 0.08) == owl_allocation(plain, plain_stats, 0.5, 5.0, 0.08)
    with pytest.raises(UserError, match="offloaded"):
        G.compute_gradient_stats(model, ids[:1], progress=False)


def test_cli_dtype_and_device_map(tiny_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--quiet", "prune", "--model", str(tiny_model_dir), "--nsamples", "4", "--seqlen", "32",
               "--eval-data", str(wikitext_test), "--eval-tokens", "256", "--dtype", "bfloat16",
               "--device-map", "auto", "--method", "sparsegpt", "--pattern", "2:4", "--save", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["placement"]["dtype"] == "bfloat16" and results["config"]["device_map"] == "auto"
    assert results["actual_sparsity"] == pytest.approx(0.5, abs=1e-9)
    assert all(row["sparsity"] == pytest.approx(0.5) for row in results["layers"])
    assert 1 < results["pruned"]["ppl"] < float("inf")
    for extra, message in [(["--device", "cpu", "--device-map", "auto"], "not both"),
                           (["--dtype", "float8"], "--dtype must be one of"),
                           (["--device-map", "everywhere"], "--device-map must be one of"),
                           (["--max-memory", "0=1GiB"], "--max-memory needs --device-map"),
                           (["--grad-chunk-layers", "0"], "--grad-chunk-layers must be >= 1")]:
        assert main(["prune", "--model", str(tiny_model_dir), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# ----------------------------------------------------------------- chunked gradients

VOCAB = 128


def _three_layer_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # GPT-2: Conv1D gradients come out transposed
def test_chunked_gradients_equal_unchunked(arch, ids):
    model = _three_layer_llama() if arch == "llama" else build_tiny_model("gpt2")
    full = G.compute_gradient_stats(model, ids, progress=False)
    for chunk in (1, 2):  # 2 of 3 layers: an uneven last chunk
        chunked = G.compute_gradient_stats(model, ids, progress=False, chunk_layers=chunk)
        assert list(chunked) == list(full)
        for name in full:
            for a, b in zip(chunked[name], full[name]):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_chunks_take_k_layers_from_every_device(monkeypatch):
    model = build_tiny_model("gemma3")  # 3 decoder layers
    assert G.layer_chunks(model, None) == [[0, 1, 2]]
    assert G.layer_chunks(model, 2) == [[0, 1], [2]]
    assert G.layer_chunks(model, 1, layers=[0, 2]) == [[0], [2]]
    layers = find_decoder_layers(model)[1]
    fake = {id(layers[0]): "cuda:0", id(layers[1]): "cuda:0", id(layers[2]): "cuda:1"}  # a 2-GPU device map
    monkeypatch.setattr(gradient_compute, "module_device", lambda layer: torch.device(fake[id(layer)]))
    assert G.layer_chunks(model, 1) == [[0, 2], [1]]  # both GPUs busy in the first chunk
    assert G.layer_chunks(model, 2) == [[0, 1, 2]]


def test_chunked_cache_same_key_and_resume_across_chunkings(tmp_path, ids):
    model = _three_layer_llama()
    full = G.compute_gradient_stats(model, ids, progress=False)
    kw = dict(model_id="tiny", data_id="rand", seed=0, progress=False, checkpoint_every=2)

    def stop_at(step: int):
        def hook(done: int) -> None:
            if done == step:
                raise KeyboardInterrupt
        return hook

    # chunks of 1 layer, stopped in the second chunk after its checkpoint at 2 samples
    with pytest.raises(KeyboardInterrupt):
        G.load_or_compute_gradients(model, ids, cache=tmp_path, chunk_layers=1, on_progress=stop_at(5 + 3), **kw)
    key = next(tmp_path.glob("*.progress.json")).name.split(".")[0]
    assert json.loads((tmp_path / f"{key}.progress.json").read_text())["complete_layers"] == [0]
    # resumed with other chunks: layer 1 from its checkpoint, layer 2 with it in one chunk
    stats, info = G.load_or_compute_gradients(model, ids, cache=tmp_path, chunk_layers=2, **kw)
    assert info["resumed_layers"] == 1 and info["resumed_from"] == 2 and info["chunks"] == 2
    assert isinstance(stats, G.GradientFile) and [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]
    for name in full:
        for a, b in zip(stats[name], full[name]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)

    # the key ignores chunking: an unchunked run elsewhere names the same file; this one is a cache hit
    _, other = G.load_or_compute_gradients(model, ids, cache=tmp_path / "other", **kw)
    assert Path(other["cache_file"]).name == f"{key}.safetensors"
    _, again = G.load_or_compute_gradients(model, ids, cache=tmp_path, chunk_layers=1, **kw)
    assert again["cached"]


def test_bf16_weights_get_their_own_gradient_cache_key(ids):
    model = _three_layer_llama()
    fields = gradient_cache._key_fields(model, ids, "m", "d", 0, 1, None)
    assert "weights_dtype" not in fields  # float32 weights keep the keys of earlier versions
    bf16 = gradient_cache._key_fields(model.to(torch.bfloat16), ids, "m", "d", 0, 1, None)
    assert bf16["weights_dtype"] == "bfloat16" and G.cache_key(bf16) != G.cache_key(fields)


# ----------------------------------------------------------------- --config files

def _dry_run(capsys, *argv: str) -> dict:
    assert main(["prune", *argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_config_file_values_and_precedence(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": str(tiny_model_dir), "method": "sparsegpt", "nsamples": 4, "seqlen": 32,
                                "dtype": "bfloat16", "zero_shot": ["boolq"], "metric": "abs(W)"}))
    cfg = _dry_run(capsys, "--config", str(path))
    assert (cfg["method"], cfg["nsamples"], cfg["seqlen"], cfg["dtype"], cfg["zero_shot"], cfg["metric"]) == \
        ("sparsegpt", 4, 32, "bfloat16", ["boolq"], "abs(W)")
    cfg = _dry_run(capsys, "--config", str(path), "--nsamples", "8", "--metric", "abs(W) * sqrt(X)")
    assert cfg["nsamples"] == 8 and cfg["seqlen"] == 32 and cfg["metric"] == "abs(W) * sqrt(X)"  # flags win
    assert PruneConfig.from_dict(cfg).nsamples == 8


@pytest.mark.parametrize("content, message", [
    ({"nsampels": 4}, "unknown key(s) nsampels"),
    ({"nsamples": "128"}, "nsamples must be an integer"),
    ({"sparsity": True}, "sparsity must be a number"),
    ({"zero_shot": "boolq"}, "zero_shot must be a list of strings"),
    ({"dtype": "fp16"}, "--dtype must be one of"),
    ([1, 2], "must be a JSON object"),
    ("{not json", "not readable JSON"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["prune", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert main(["prune", "--config", str(tmp_path / "missing.json")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_every_config_field_is_a_prune_option():
    parser = build_parser()
    dests = {a.dest for a in parser.prune_parser._actions}
    from dataclasses import fields

    assert {f.name for f in fields(PruneConfig)} <= dests


SHIPPED = sorted(CONFIGS.glob("*/*.json"))


def test_configs_cover_the_papers_models():
    assert {p.parent.name for p in SHIPPED} == {"llama-7b", "llama-13b", "llama-2-7b", "llama-2-13b", "llama-2-70b",
                                                "llama-3-8b"}
    assert {p.stem for p in SHIPPED} == {"wanda", "sparsegpt", "pruner-zero"}
    assert len(SHIPPED) == 18


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_is_valid(path, capsys):
    data = json.loads(path.read_text())
    cfg = _dry_run(capsys, "--config", str(path))  # every key known and typed, every value validated
    assert {k: cfg[k] for k in data} == data
    assert cfg["method"] == path.stem and cfg["calib_data"] == "c4" and cfg["eval_data"] == "wikitext2"
    assert cfg["nsamples"] == 128 and cfg["seed"] == 0 and cfg["eval_seqlen"] is None  # eval at the calibration length
    assert cfg["seqlen"] == (2048 if path.parent.name in ("llama-7b", "llama-13b") else 4096)
    assert cfg["dtype"] in ("float16", "bfloat16") and cfg["device_map"] == "auto"


# ----------------------------------------------------------------- on GPUs (skipped without CUDA)

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_bf16_masks_agree_with_cpu_float32(calib_ids, method):
    cpu = build_tiny_model("llama")
    prune_model(cpu, get_method(method), parse_target(0.5), calib_ids, progress=False)
    gpu32 = build_tiny_model("llama").cuda()
    prune_model(gpu32, get_method(method), parse_target(0.5), calib_ids, progress=False)
    gpu16 = build_tiny_model("llama").to("cuda", torch.bfloat16)
    report = prune_model(gpu16, get_method(method), parse_target(0.5), calib_ids, progress=False)
    assert report.sparsity == 0.5
    assert next(gpu16.parameters()).dtype == torch.bfloat16
    assert _agreement(_masks(gpu32), _masks(cpu)) > 0.99  # float32 on both: kernels differ in rounding only
    assert _agreement(_masks(gpu16), _masks(cpu)) > 0.9
    with torch.no_grad():
        assert torch.isfinite(gpu16(input_ids=calib_ids.cuda()).logits).all()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_layers_split_over_two_gpus_prune_like_one(tiny_model_dir):
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    one = load_model(str(tiny_model_dir), device="cuda:0").model
    split = load_model(str(tiny_model_dir), device_map={
        "model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1, "model.rotary_emb": 0,
        "lm_head": 0}).model
    assert find_decoder_layers(split)[1][1].mlp.down_proj.weight.device == torch.device("cuda", 1)
    for model in (one, split):
        prune_model(model, get_method("sparsegpt"), parse_target(0.5), ids, progress=False)
    assert _agreement(_masks(split), _masks(one)) > 0.999
    with torch.no_grad():
        torch.testing.assert_close(split(input_ids=ids.cuda()).logits.cpu(), one(input_ids=ids.cuda()).logits.cpu(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_chunked_gradients_equal_cpu(ids):
    model = _three_layer_llama()
    cpu = G.compute_gradient_stats(model, ids, progress=False)
    gpu = G.compute_gradient_stats(model.cuda(), ids, progress=False, chunk_layers=2)
    for name in cpu:
        for a, b in zip(gpu[name], cpu[name]):
            assert a.device.type == "cpu"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------- search placement

def _search(model_dir, wikitext, out, *extra):
    return ["--quiet", "search", "--model", str(model_dir), "--out", str(out), "--population", "4",
            "--generations", "1", "--seed", "0", "--nsamples", "4", "--seqlen", "32", "--fidelity-tokens", "64",
            "--report-data", str(wikitext), "--report-tokens", "128", "--leaderboard-top", "1",
            "--baselines", "wanda", "--dtype", "bfloat16", *extra]


def test_search_with_a_device_map_scores_like_one_device(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    """On a CPU `--device-map auto` puts every layer on the CPU: the same bf16 model, so the same
    fitness for every candidate; the copies the fitness restores from stay bf16 (half the memory)."""
    from prunerzero.search import context as context_module
    from prunerzero.search import job as job_module
    from prunerzero.search import run as run_module

    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    built = []
    real_build = run_module.build_context
    monkeypatch.setattr(run_module, "build_context", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    runs = {}
    for label, extra in (("one", ["--device", "cpu"]), ("spread", ["--device-map", "auto"])):
        assert main(_search(tiny_model_dir, wikitext_test, tmp_path / label, *extra)) == 0
        runs[label] = [(r["key"], r["fitness"]) for r in map(json.loads, (tmp_path / label / "evaluations.jsonl").open())]
    assert runs["one"] == runs["spread"] and len(runs["one"]) >= 4
    assert json.loads((tmp_path / "spread" / "job.json").read_text())["device_map"] == "auto"
    assert {w.dtype for w in built[-1].fitness.dense.values()} == {torch.bfloat16}
    # What a Ray worker builds from the run folder: the job's dtype too.
    worker = context_module.ProxyFitnessFactory(job_module.SearchJob.from_dict(
        json.loads((tmp_path / "one" / "job.json").read_text())), str(tmp_path / "one"))()
    assert next(worker.model.parameters()).dtype == torch.bfloat16


def test_search_refuses_offloaded_layers_and_ray_with_a_device_map(tiny_model_dir, wikitext_test, tmp_path,
                                                                  monkeypatch, capsys):
    from prunerzero import models as models_module

    # What a device map that does not fit gives: decoder layer 1 on disk.
    monkeypatch.setattr(models_module, "load_model", lambda *a, **k: _loaded_offloaded(tiny_model_dir, tmp_path))
    assert main(_search(tiny_model_dir, wikitext_test, tmp_path / "run", "--device-map", "auto")) == 2
    err = capsys.readouterr().err.strip()
    assert "the search needs every layer on a device" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()

    pytest.importorskip("ray")
    assert main(_search(tiny_model_dir, wikitext_test, tmp_path / "ray", "--device-map", "auto",
                        "--executor", "ray")) == 2
    err = capsys.readouterr().err.strip()
    assert "use --executor serial with --device-map" in err and len(err.splitlines()) == 1, err


def _loaded_offloaded(model_dir: Path, folder: Path):
    from prunerzero.models import LoadedModel

    lm = load_model(str(model_dir))
    return LoadedModel(model=_offloaded(model_dir, folder / "offload"), tokenizer=lm.tokenizer, source=str(model_dir),
                       path=lm.path)
