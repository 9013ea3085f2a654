"""What a search job loads, once: the model, the texts, the dense statistics (X, G and H when needed,
kept in the run folder) and the fitness over them -- for this process and for each Ray worker."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .. import io
from ..calib.stats import LinearStats, attach_gradients
from ..data import describe_source, evaluation_split, load_text
from ..errors import UserError, short, warn
from ..memory import release_free_heap
from ..models import LoadedModel, load_model, parse_dtype, prunable_linears, weight_matrix
from ..placement import has_offloaded_weights
from ..pipeline import collect_dense_stats
from ..windows import Windowing, tokenize, windowing_for
from .fitness import ProxyFitness
from .job import STATS_FILE, SearchJob, fitness_split

def _save_stats(path: Path, stats: dict[str, LinearStats]) -> None:
    tensors = {}
    seen: set[int] = set()  # storages already written
    for name, s in stats.items():
        for key in ("x_mean_sq", "hessian", "grad_l1", "grad_l2"):
            value = getattr(s, key)
            if value is not None:
                value = value.contiguous()
                # q/k/v (gate/up) share one X and H tensor (calib.stats); safetensors refuses shared
                # storage, so a sibling's copy is written on its own (it is read back as one anyway).
                ptr = value.untyped_storage().data_ptr()
                tensors[f"{name}.{key}"] = value.clone() if ptr in seen else value
                seen.add(ptr)
    io.write_bytes(path, save(tensors))


def _load_stats(path: Path) -> dict[str, LinearStats]:
    out: dict[str, LinearStats] = {}
    for key, value in load_file(str(path)).items():
        name, attr = key.rsplit(".", 1)
        setattr(out.setdefault(name, LinearStats()), attr, value)
    return out


def stats_file(index: int) -> str:
    """The statistics of the job's index-th model (one model: stats.safetensors, as before)."""
    return STATS_FILE if index == 0 else f"stats-{index}.safetensors"


def wants_hessian(job: SearchJob) -> bool:
    """H is part of the run's statistics when candidates are reconstructed or scored by the err rung."""
    return job.reconstruct != "none" or any(r.kind == "err" for r in job.fitness_settings().rungs())


def _stats_problem(path: Path, lm: LoadedModel, job: SearchJob) -> tuple[dict[str, LinearStats] | None, str | None]:
    """(stats, None) if ``path`` holds this model's statistics, else (None, what is wrong)."""
    try:
        stats = _load_stats(path)
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own errors on damaged bytes
        return None, f"{type(exc).__name__}: {str(exc).strip()[:120]}"
    for name, module in prunable_linears(lm.model).items():
        s = stats.get(name)
        out_f, in_f = weight_matrix(module).shape
        if s is None or s.x_mean_sq is None or s.grad_l1 is None or s.grad_l2 is None:
            return None, f"no statistics for {name}"
        if (tuple(s.x_mean_sq.shape) != (in_f,) or tuple(s.grad_l1.shape) != (out_f, in_f)
                or tuple(s.grad_l2.shape) != (out_f, in_f)
                or (wants_hessian(job) and (s.hessian is None or tuple(s.hessian.shape) != (in_f, in_f)))):
            return None, f"statistics of {name} do not fit the model"
    return stats, None


def proxy_statistics(lm: LoadedModel, job: SearchJob, calib_ids: torch.Tensor, out: Path,
                     progress: bool, index: int = 0) -> dict[str, LinearStats]:
    """X (and H when reconstructing) from the dense model and G from backprop, once per run (kept in
    the run folder)."""
    path = out / stats_file(index)
    if path.exists():
        stats, problem = _stats_problem(path, lm, job)
        if stats is not None:
            return stats
        # Derived data: computing it again from the model and the calibration windows is exact.
        warn(f"{short(path)} is damaged ({problem}): computing the statistics again")
    start = time.perf_counter()
    needs = frozenset({"X", "H"} if wants_hessian(job) else {"X"})
    stats = collect_dense_stats(lm.model, calib_ids, needs, batch_size=job.nsamples, progress=progress)
    x_seconds = time.perf_counter() - start
    grads, grad_info = job.dense_gradients(lm, calib_ids, progress=progress)
    # What recomputing the statistics per candidate would cost (bench/search_bench.py reads it).
    io.write_json(out / ("timing.json" if index == 0 else f"timing-{index}.json"),
                  {"statistics": x_seconds, "gradients": grad_info["seconds"], "gradients_cached": grad_info["cached"]})
    attach_gradients(stats, grads)
    _save_stats(path, stats)
    return stats


@dataclass
class JobContext:
    """What the search and the leaderboard share: the loaded model and the tokenised data."""

    lm: LoadedModel
    calib_ids: torch.Tensor
    fitness: ProxyFitness
    report_tokens: dict[str, torch.Tensor]  # reporting source -> (1, N) tokens
    report_info: dict[str, dict]
    windowing: Windowing
    job: SearchJob
    calib_tokens: torch.Tensor  # (1, N) the calibration text, for other seeds' windows
    progress: bool = True

    def calibration(self, seed: int | None, with_gradients: bool) -> tuple[torch.Tensor, Any]:
        """Calibration windows of `seed` (the run's seed: the search's own) and, when asked, their G
        (computed once per seed into the gradient cache)."""
        job = self.job
        seed = job.seed if seed is None else seed
        ids = self.calib_ids if seed == job.seed else job.calibration_windows(self.calib_tokens, self.windowing, seed)
        if not with_gradients:
            return ids, None
        if seed == job.seed:
            return ids, {n: (s.grad_l1, s.grad_l2) for n, s in self.fitness.stats.items() if s.grad_l1 is not None}
        self.fitness.restore()  # G of the dense model
        grads, _ = job.dense_gradients(self.lm, ids, seed=seed, progress=self.progress)
        return ids, grads


def _proxy_fitness(job: SearchJob, lm: LoadedModel, stats: dict[str, LinearStats],
                   calib_ids: torch.Tensor | None = None) -> ProxyFitness:
    """The search fitness over the job's search split (shared by this process and Ray workers)."""
    split = fitness_split(job.fitness_data, job.calib_data)
    windowing = windowing_for(lm.tokenizer, job.bos)
    search_tokens = tokenize(lm.tokenizer, load_text(job.fitness_data, split), windowing)
    if calib_ids is None and any(r.kind == "seq" for r in job.fitness_settings().rungs()):
        calib_ids = job.calibration_windows(job.calibration_tokens(lm, windowing), windowing)
    release_free_heap()  # the texts' parsing garbage, held for the whole search otherwise
    return ProxyFitness(lm.model, search_tokens, stats, job.fitness_settings(),
                        data_info=describe_source(job.fitness_data, split), windowing=windowing, calib_ids=calib_ids)


def build_context(job: SearchJob, out: Path, progress: bool, index: int = 0) -> JobContext:
    """The loaded model, data and fitness of the job's index-th model (the only one, usually)."""
    model = job.models[index]
    lm, windowing = job.open_model(model)
    if has_offloaded_weights(lm.model):
        # Every candidate rewrites every weight: layers on disk or in accelerate's CPU store would be
        # written back once per candidate and per setting, far slower than the search is worth.
        raise UserError("the search needs every layer on a device, but the device map offloaded some "
                        "(give --max-memory more room, or use more GPUs)")
    job.check_calib_fits(lm)
    calib_tokens = job.calibration_tokens(lm, windowing)
    calib_ids = job.calibration_windows(calib_tokens, windowing)
    report_tokens, report_info = {}, {}
    for source in job.report_sources:  # loaded before the search: unreachable data fails now, not in hours
        report_split = evaluation_split(source)
        name = source if len(job.models) == 1 else f"{source} @ {model}"
        report_tokens[name] = tokenize(lm.tokenizer, load_text(source, report_split), windowing)
        report_info[name] = describe_source(source, report_split)
        if len(job.models) > 1:
            report_info[name]["model"] = model
    stats = proxy_statistics(lm, job, calib_ids, out, progress, index)
    return JobContext(lm, calib_ids, _proxy_fitness(job, lm, stats, calib_ids), report_tokens, report_info, windowing,
                      job, calib_tokens, progress)


@dataclass(frozen=True)
class ProxyFitnessFactory:
    """Builds the job's ProxyFitness inside a Ray worker: loads the model and reads X, G (and H
    when reconstructing) from the run folder's stats.safetensors, written by this process before
    any worker starts, so no worker recomputes statistics.  On a multi-node cluster the run folder (and a local model
    path) must be reachable at the same path on every node, e.g. a shared filesystem."""

    job: SearchJob
    out: str

    def __call__(self) -> ProxyFitness:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a worker's weight-loading bars would interleave with the driver's
        # Inside a GPU actor, Ray makes its one GPU "cuda"; "cuda:N" of the driver means nothing here.
        device = "cuda" if self.job.device != "cpu" and torch.cuda.is_available() else "cpu"
        path = Path(self.out) / STATS_FILE
        if not path.exists():
            raise UserError(f"{path} not found on this Ray node: the run folder must be on a filesystem every "
                            "node sees")
        lm = load_model(self.job.models[0], dtype=parse_dtype(self.job.dtype), device=device)
        return _proxy_fitness(self.job, lm, _load_stats(path))


