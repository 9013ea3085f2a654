"""The library entry points behind the CLI: prune a model, measure a model.

Every input is checked before any heavy work, so bad input fails in a second and writes nothing.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import io
from .allocation import Allocation, owl_allocation, plot_allocation
from .config import PruneConfig
from .errors import UserError, clip, short
from .eval.perplexity import perplexity
from .masks import SparsityTarget
from .memory import peak_rss_mib, release_free_heap
from .methods import METHODS, Method, get_method
from .methods.reconstruct import mask_only, with_reconstruction
from .models import LoadedModel, cache_dir, max_context
from .pipeline import collect_dense_stats, prune_model, prune_output_head
from .placement import devices_of, input_device
from .precision import bf16_autocast
from .data import check_source
from .settings import EvalSettings, OffloadSettings, check_seqlen, check_zero_shot
from .symbolic import InvalidMetricError
from .windows import Windowing

RESULTS_FILE = "results.json"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("prunerzero", "torch", "transformers", "datasets", "lm-eval"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def build_method(cfg: PruneConfig) -> Method:
    if cfg.metric:
        from .methods.symbolic import symbolic_method
        from .symbolic import load_metric

        method = symbolic_method(load_metric(cfg.metric))
    else:
        options: dict[str, Any] = {}
        if cfg.method == "sparsegpt":
            options = {"percdamp": cfg.percdamp, "blocksize": cfg.blocksize}
        method = get_method(cfg.method, **options)
    if cfg.reconstruct != "none":
        method = with_reconstruction(method, cfg.reconstruct_mode, percdamp=cfg.percdamp, blocksize=cfg.blocksize,
                                     kind=cfg.reconstruct, **cfg.reconstruct_options())
    return mask_only(method) if cfg.mask_only else method


def check_output_dir(save: str | None, overwrite: bool) -> None:
    if save is None:
        return
    if not save.strip():
        raise UserError("--save is empty")
    if (Path(save) / RESULTS_FILE).exists() and not overwrite:
        raise UserError(f"{short(save)} already holds a run's results; pass --overwrite or choose another --save")
    # Now, not after the pruning: an unwritable --save (or a file there) must not cost the run.
    io.check_writable_dir(save, "--save")
    if (Path(save) / RESULTS_FILE).is_dir():
        raise UserError(f"{short(Path(save) / RESULTS_FILE)} is a folder: it cannot be replaced by the results")


def peak_gpu_mib() -> dict[str, float]:
    """Peak memory allocated by torch on each CUDA device so far ({} without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.max_memory_allocated(i) / 2**20 for i in range(torch.cuda.device_count())}


def placement_record(lm: LoadedModel) -> dict[str, Any]:
    """What results.json says about where the model ran."""
    device_map = devices_of(lm.model)
    return {"dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
            "input_device": str(input_device(lm.model)),
            "devices": sorted({str(d) for d in device_map.values()}) or [str(input_device(lm.model))],
            "device_map": device_map or None}


def validate(cfg: PruneConfig) -> tuple[SparsityTarget, Method]:
    """Every cheap check, before loading anything big (each settings group checks its own fields)."""
    target = cfg.target(cfg.sparsity)
    cfg.check_pruning()
    check_zero_shot(cfg.zero_shot, cfg.zero_shot_limit)
    if cfg.within_layer not in ("auto", "sequential", "parallel"):
        raise UserError(f"--within-layer must be auto, sequential or parallel, not {cfg.within_layer!r}")
    if cfg.calib_dtype not in ("float32", "bfloat16"):
        raise UserError(f"--calib-dtype must be float32 or bfloat16, not {cfg.calib_dtype!r}")
    if cfg.grad_chunk_layers is not None and cfg.grad_chunk_layers < 1:
        raise UserError(f"--grad-chunk-layers must be >= 1, not {cfg.grad_chunk_layers}")
    if cfg.save_model and not cfg.save:
        raise UserError("--save-model needs --save DIR")
    cfg.check_levers([target], method_reconstructs=not cfg.metric and cfg.method == "sparsegpt")
    if not cfg.metric and cfg.method == "sparsegpt":
        from .methods.sparsegpt import check_sparsegpt_group

        check_sparsegpt_group(target)
    if cfg.metric is not None and not str(cfg.metric).strip():
        raise UserError("--metric is empty: pass a formula, a named metric or a metric file")
    if not cfg.metric and cfg.method not in METHODS:
        METHODS.get(cfg.method)  # raises with a did-you-mean
    method = build_method(cfg)
    if cfg.metric:
        check_metric_ranks(cfg.metric)
    if cfg.prune_head and "G" in method.needs:
        raise UserError("the output head cannot be pruned with a gradient-based method (G covers decoder layers "
                        "only); drop --prune-head or use a method over W and X")
    check_output_dir(cfg.save, cfg.overwrite)
    cfg.check_model()
    cfg.check_calibration(reads_text=cfg.reads_calibration(method.needs))
    cfg.check_eval()
    cfg.check_model_path()  # a missing path fails here; hub ids are checked when loading
    return target, method


def check_metric_ranks(metric_spec: str) -> None:
    """A formula that cannot rank any layer's weights (constant, or ties deciding the mask) is
    refused before the model loads, with the reason."""
    from .symbolic import degenerate_reason, load_metric

    metric = load_metric(metric_spec)
    reason = degenerate_reason(metric)
    if reason is not None:
        raise UserError(f"metric {clip(str(metric))} cannot rank weights ({reason})")


def _ppl_cache_file(lm: LoadedModel, eval_info: dict, seqlen: int, tokens: int | None,
                    windowing: Windowing) -> Path:
    folder = Path(lm.path)
    stamp = [str(p.stat().st_mtime_ns) for p in sorted(folder.glob("*.safetensors"))] if folder.exists() else []
    parts: list[Any] = [lm.path, stamp, eval_info, seqlen, tokens]
    dtype = next(lm.model.parameters()).dtype
    if dtype != torch.float32:  # float32 keeps the keys of earlier versions
        parts.append(str(dtype))
    if windowing.cache_part() is not None:  # a BOS rule gets its own keys; no BOS keeps the earlier ones
        parts.append(windowing.cache_part())
    key = json.dumps(parts, sort_keys=True)
    return cache_dir() / "dense-ppl" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")


def dense_perplexity(lm: LoadedModel, test_tokens: torch.Tensor, eval_info: dict, seqlen: int,
                     tokens: int | None, progress: bool, windowing: Windowing) -> dict:
    """Dense perplexity, cached on disk: it depends only on the model and the eval settings."""
    cache = _ppl_cache_file(lm, eval_info, seqlen, tokens, windowing)
    if cache.exists():
        return {**json.loads(cache.read_text()), "cached": True}
    result = perplexity(lm.model, test_tokens, seqlen, tokens, progress=progress, windowing=windowing)
    io.write_json(cache, result)
    return {**result, "cached": False}


def prune(cfg: PruneConfig, progress: bool = True) -> dict[str, Any]:
    """Prune cfg.model as configured; returns (and with cfg.save, writes) the results record."""
    started = time.perf_counter()
    target, method = validate(cfg)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    lm, windowing = cfg.open_model()
    timings["load_model"] = time.perf_counter() - t
    cfg.check_calib_fits(lm)
    cfg.check_eval_fits(lm)

    test_tokens, eval_info = None, None
    if cfg.eval_data:  # load before pruning: unreachable data must fail before minutes of work
        test_tokens, eval_info = cfg.test_tokens(lm, windowing)

    calib_ids = None
    if cfg.reads_calibration(method.needs):
        calib_ids = cfg.calibration_windows(cfg.calibration_tokens(lm, windowing), windowing)
    release_free_heap()  # the texts' parsing garbage would otherwise stay resident for the whole run

    results: dict[str, Any] = {
        "method": method.name, "method_details": method.describe, "model": cfg.model, "model_path": lm.path,
        "pattern": target.pattern, "target_sparsity": target.sparsity, "group": target.group,
        "calibration": {"data": cfg.calib_data, "nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "seed": cfg.seed,
                        "dtype": cfg.calib_dtype} if calib_ids is not None else None,
        "windowing": windowing.to_dict(),
        "config": cfg.to_dict(), "placement": placement_record(lm), "versions": package_versions(),
    }

    if test_tokens is not None and not cfg.skip_dense:
        results["dense"] = dense_perplexity(lm, test_tokens, eval_info, cfg.effective_eval_seqlen, cfg.eval_tokens,
                                            progress, windowing)

    grads = None
    if "G" in method.needs:
        t = time.perf_counter()
        grads, grad_info = cfg.dense_gradients(lm, calib_ids, file=cfg.gradients, chunk_layers=cfg.grad_chunk_layers,
                                               progress=progress)
        timings["gradients"] = time.perf_counter() - t
        results["gradients"] = grad_info

    device_type = input_device(lm.model).type
    autocast = bf16_autocast(device_type, enabled=cfg.calib_dtype == "bfloat16")
    layer_target: Any = target
    alloc: Allocation | None = None
    if cfg.allocation == "owl":
        t = time.perf_counter()
        with autocast:  # one dense pass for X: OWL measures outliers on the dense model
            dense_stats = collect_dense_stats(lm.model, calib_ids, frozenset({"X"}), batch_size=cfg.batch_size,
                                              progress=progress)
        alloc = owl_allocation(lm.model, dense_stats, target.sparsity, cfg.owl_m, cfg.owl_lambda)
        del dense_stats
        layer_target = lambda i: target.with_sparsity(alloc.layer_sparsity[i])  # noqa: E731
        results["allocation"] = alloc.to_dict()
        timings["allocation"] = time.perf_counter() - t
    try:
        with autocast:
            report = prune_model(lm.model, method, layer_target, calib_ids, batch_size=cfg.batch_size, grads=grads,
                                 within_layer=cfg.within_layer, progress=progress)
        if cfg.prune_head:
            with autocast:
                results["head"] = prune_output_head(lm.model, method, target, calib_ids, report,
                                                    batch_size=cfg.batch_size)
    except InvalidMetricError as exc:  # e.g. scores that overflow to inf on this model's weights
        what = method.describe.get("formula") or method.name
        raise UserError(f"metric {clip(what)} cannot rank this model's weights: {exc.reason}") from None
    timings["prune"] = report.seconds["prune"] + report.seconds.get("head", 0.0)
    results["within_layer"] = report.within_layer
    results["actual_sparsity"] = report.sparsity
    results["layers"] = report.layers

    if test_tokens is not None:
        pruned = perplexity(lm.model, test_tokens, cfg.effective_eval_seqlen, cfg.eval_tokens, progress=progress,
                            windowing=windowing)
        results["pruned"] = pruned
        results["eval"] = {**eval_info, "seqlen": cfg.effective_eval_seqlen, "tokens": pruned["tokens"]}
        timings["eval"] = pruned["seconds"]

    if cfg.zero_shot:
        from .eval.zeroshot import evaluate_zeroshot

        t = time.perf_counter()
        results["zero_shot"] = evaluate_zeroshot(lm.model, lm.tokenizer, list(cfg.zero_shot), limit=cfg.zero_shot_limit)
        timings["zero_shot"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - started
    results["seconds"] = timings
    results["peak_rss_mib"] = peak_rss_mib()
    if torch.cuda.is_available():
        results["peak_gpu_mib"] = peak_gpu_mib()
    if cfg.save:
        save_results(cfg, lm, results, alloc)
    return results


def save_results(cfg: PruneConfig, lm: LoadedModel, results: dict[str, Any],
                 allocation: Allocation | None = None) -> None:
    out = Path(cfg.save)
    check_output_dir(cfg.save, cfg.overwrite)  # again: another run may have finished meanwhile
    if allocation is not None:
        plot_allocation(allocation, results["target_sparsity"], out / "layer_sparsity.png")
        results["allocation"]["plot"] = "layer_sparsity.png"
    if cfg.save_model:
        with io.atomic_directory(out / "model") as tmp:
            lm.model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
        results["saved_model"] = str(out / "model")
    io.write_json(out / RESULTS_FILE, results)  # last: its presence marks a finished run


def evaluate_model(model: str, eval_data: str | None, seqlen: int | None, eval_tokens: int | None,
                   zero_shot: tuple[str, ...] = (), zero_shot_limit: int | None = None,
                   progress: bool = True, device: str = "auto", dtype: str = "float32", device_map: str = "none",
                   max_memory: str | None = None, offload_folder: str | None = None,
                   bos: str = "auto") -> dict[str, Any]:
    """Perplexity (and optionally zero-shot accuracy) of any model, pruned or not."""
    where = OffloadSettings(model=model, device=device, dtype=dtype, bos=bos, device_map=device_map,
                            max_memory=max_memory, offload_folder=offload_folder)
    check_zero_shot(zero_shot)
    where.check_model()
    check_source(eval_data, "--eval-data")
    lm, windowing = where.open_model()
    seqlen = seqlen or min(max_context(lm.model) or 2048, 2048)
    check_seqlen(lm, seqlen)
    out: dict[str, Any] = {"model": model, "model_path": lm.path, "placement": placement_record(lm),
                           "windowing": windowing.to_dict()}
    if eval_data:
        text = EvalSettings(eval_data=eval_data, eval_seqlen=seqlen)
        tokens, info = text.test_tokens(lm, windowing)
        out["perplexity"] = perplexity(lm.model, tokens, seqlen, eval_tokens, progress=progress, windowing=windowing)
        out["eval"] = info
    if zero_shot:
        from .eval.zeroshot import evaluate_zeroshot

        out["zero_shot"] = evaluate_zeroshot(lm.model, lm.tokenizer, list(zero_shot), limit=zero_shot_limit)
    return out
