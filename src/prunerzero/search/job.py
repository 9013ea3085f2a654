"""A whole search job: proxy model, statistics once, the GP run, then the leaderboard.

Everything lands in the run folder as it happens:
  job.json            the job's settings (resume reads them back; a different job is refused)
  stats.safetensors   X and G of the dense proxy model, computed once
  evaluations.jsonl, checkpoint.json, hall_of_fame.json, best_metric.txt, best_tree.json  (engine)
  leaderboard.jsonl   one line per (metric, setting) re-evaluated on the reporting data
  leaderboard.md      the final side-by-side table
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .. import io
from ..calib.stats import LinearStats
from ..data import LOCAL_SOURCES, calib_split, describe_source, evaluation_split, load_text
from ..errors import UserError, clip, known_keys_only, path_kind, short, warn
from ..models import LoadedModel, check_placement, load_model, parse_dtype, resolve_device
from ..placement import has_offloaded_weights
from ..pipeline import collect_dense_stats
from ..windows import Windowing, calibration_windows, check_bos_mode, tokenize, windowing_for
from .config import SearchConfig
from .executors import ExecutorSpec
from .fitness import FitnessSettings, MultiModelFitness, ProxyFitness, parse_setting

JOB_FILE = "job.json"
STATS_FILE = "stats.safetensors"


@dataclass(frozen=True)
class SearchJob:
    model: str = "smollm2-135m"
    settings: tuple[str, ...] = ("0.5",)  # "0.5" (unstructured), "2:4", "0.6:unstructured", ...
    calib_data: str = "general"
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0
    bos: str = "auto"  # window rule (windows.BOS_MODES) for calibration, fitness and reporting windows
    fitness_data: str = "general"  # its search split: disjoint from calibration and reporting text
    fidelity_tokens: tuple[int, ...] = (1024, 4096)
    ladder: tuple[str, ...] = ()  # fidelity rungs (search.proxies), cheapest first; replaces fidelity_tokens
    terminal_scale: str = "raw"  # "layer": scale-free W, X, G (each divided by its layer mean)
    eval_dtype: str = "float32"
    device: str = "auto"
    dtype: str = "float32"  # weights as loaded (masks and metrics stay float32)
    device_map: str = "none"  # or auto / balanced / sequential: one model spread over GPUs (serial executor)
    max_memory: str | None = None  # with device_map: "0=70GiB,1=70GiB"
    report_data: str | None = "wikitext2"  # reporting texts, comma-separated (e.g. "wikitext2,qasper")
    report_tokens: int | None = None
    calib_seeds: tuple[int, ...] = ()  # the leaderboard's calibration draws (empty: just `seed`)
    leaderboard_top: int = 3
    baselines: tuple[str, ...] = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")
    reconstruct: str = "none"  # obs: fitness (and leaderboard) prune with the OBS update after the mask
    reconstruct_mode: str = "fixed"
    allocation: str = "uniform"  # owl: OWL layer-wise sparsity (unstructured settings)
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "search"}
        d = json.loads(json.dumps(d))  # tuples -> lists
        d["search"] = self.search.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchJob":
        """A job read back from job.json; every value of its declared type, or one UserError."""
        from ..config import check_types

        data = known_keys_only(data, [f.name for f in fields(cls)], "job.json")
        data.setdefault("bos", "none")  # runs saved before the BOS rule cut every window without BOS
        check_types(cls, {k: v for k, v in data.items() if k not in ("search", "fidelity_tokens", "calib_seeds")},
                    "job.json")
        for key in ("fidelity_tokens", "calib_seeds"):
            ints = data.get(key, [])
            if not isinstance(ints, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ints):
                raise UserError(f"job.json: {key} must be a list of integers")
        for key in ("settings", "fidelity_tokens", "baselines", "ladder", "calib_seeds"):
            if key in data:
                data[key] = tuple(data[key])
        if "search" in data:
            data["search"] = SearchConfig.from_dict(data["search"])
        return cls(**data)

    @property
    def models(self) -> list[str]:
        """`model` may name several models, comma-separated: the fitness is their geometric mean."""
        return [m.strip() for m in self.model.split(",") if m.strip()]

    @property
    def report_sources(self) -> list[str]:
        return [r.strip() for r in (self.report_data or "").split(",") if r.strip()]

    @property
    def leaderboard_seeds(self) -> tuple[int, ...]:
        return self.calib_seeds or (self.seed,)

    def fitness_settings(self) -> FitnessSettings:
        return FitnessSettings(self.settings, self.fidelity_tokens, self.seqlen, self.eval_dtype,
                               reconstruct=self.reconstruct, reconstruct_mode=self.reconstruct_mode,
                               allocation=self.allocation, owl_m=self.owl_m, owl_lambda=self.owl_lambda,
                               ladder=self.ladder, terminal_scale=self.terminal_scale)


def fitness_split(source: str, calib_source: str) -> str:
    """The split of `source` that scores candidates: never the calibration text, never a test set."""
    if source in LOCAL_SOURCES:
        return "search"
    if source in ("c4", "wikitext2", "ptb"):
        return "validation"
    if Path(source).expanduser().resolve() == Path(calib_source).expanduser().resolve():
        raise UserError("--fitness-data must be different text from --calib-data")
    return "file"


def validate_job(job: SearchJob) -> None:
    """Every cheap check of a job, before anything is written or loaded."""
    from ..data import check_source
    from ..models import resolve_model_path

    if not job.models:
        raise UserError("--model is empty")
    if len(set(job.models)) != len(job.models):
        raise UserError(f"--model names a model twice: {clip(job.model, 200)}")
    check_source(job.calib_data, "--calib-data")
    check_source(job.fitness_data, "--fitness-data")
    for source in job.report_sources:
        check_source(source, "--report-data")
    for s in job.settings:
        try:
            parse_setting(s)
        except (ValueError, ZeroDivisionError):  # "a:b", "1:0": not numbers the setting parser can use
            raise UserError(f"--settings: {clip(s, 40)} is not a sparsity setting (e.g. 0.5, 0.6:unstructured, "
                            "2:4)") from None
    if not job.fidelity_tokens or list(job.fidelity_tokens) != sorted(job.fidelity_tokens):
        raise UserError("--fidelity-tokens must be ascending token budgets, e.g. 1024,4096")
    if job.fidelity_tokens[0] < job.seqlen:
        raise UserError(f"the cheapest fidelity ({job.fidelity_tokens[0]} tokens) is less than one window of {job.seqlen}")
    rungs = job.fitness_settings().rungs()
    if len({r.name for r in rungs}) != len(rungs):
        raise UserError(f"--ladder names a rung twice: {','.join(job.ladder)}")
    for rung in rungs:
        if rung.needs_forward and rung.tokens < job.seqlen:
            raise UserError(f"fidelity {rung.name} is less than one window of {job.seqlen} tokens")
    if job.fitness_data in job.report_sources:
        raise UserError("the reporting data cannot also be the search fitness data")
    if job.report_data is not None and not job.report_sources:
        raise UserError("--report-data is empty (give wikitext2, qasper, a file, or several comma-separated)")
    if len(set(job.leaderboard_seeds)) != len(job.leaderboard_seeds):
        raise UserError(f"--calib-seeds repeats a seed: {','.join(map(str, job.calib_seeds))}")
    if job.eval_dtype not in ("float32", "bfloat16"):
        raise UserError(f"--eval-dtype must be float32 or bfloat16, not {job.eval_dtype!r}")
    parse_dtype(job.dtype)
    check_bos_mode(job.bos)
    if job.terminal_scale not in ("raw", "layer"):
        raise UserError(f"--terminals must be raw or layer, not {job.terminal_scale!r}")
    check_placement(job.device, job.device_map, job.max_memory)
    from ..allocation import check_allocation, check_owl
    from ..methods import METHODS
    from ..methods.reconstruct import check_reconstruct

    for name in job.baselines:
        METHODS.get(name)
    check_reconstruct(job.reconstruct, job.reconstruct_mode)
    check_allocation(job.allocation)
    if job.search.owl_lambdas and job.allocation != "owl":
        raise UserError("--owl-lambdas evolves OWL's lambda: it needs --allocation owl")
    if job.allocation == "owl":
        targets = [parse_setting(s) for s in job.settings]
        if all(t.structured for t in targets):
            raise UserError("--allocation owl needs at least one unstructured setting")
        for t in targets:
            if not t.structured:
                for lam in (job.owl_lambda, *job.search.owl_lambdas):
                    check_owl(t.sparsity, job.owl_m, lam, False)
    for model in job.models:
        resolve_model_path(model)  # last: it may convert a GGUF file (once)


def read_job(out: Path) -> SearchJob:
    """The job saved in ``out``; a damaged job.json is one UserError saying what to do."""
    from .checkpoint import read_json

    hint = (f"it holds the search's settings; restore it, or start a new search with --out DIR "
            f"(--overwrite to reuse {short(out)})")
    try:
        job = SearchJob.from_dict(read_json(out / JOB_FILE, hint))
    except UserError as exc:
        if str(exc).startswith(str(short(out / JOB_FILE))):
            raise
        raise UserError(f"{short(out / JOB_FILE)} is damaged ({exc}): {hint}") from None
    validate_job(job)  # a hand-edited value fails here, in one line, before anything loads
    return job


def prepare_out_dir(out: Path, job: SearchJob, resume: bool, overwrite: bool) -> SearchJob:
    """Claim the folder for this job, or read the job back when resuming. Refusals come before
    anything is written."""
    from .checkpoint import RUN_FILES

    job_file = out / JOB_FILE
    if resume:
        if path_kind(out) != "dir":
            raise UserError(f"nothing to resume: {short(out)} is not a folder")
        if not job_file.exists():
            raise UserError(f"nothing to resume in {short(out)} (no {JOB_FILE})")
        io.check_writable_dir(out, "--resume folder")
        return read_job(out)
    io.check_writable_dir(out, "--out")
    if job_file.exists() and not overwrite:
        raise UserError(f"{out} already holds a search; pass --resume to continue it or --overwrite to replace it")
    leftovers = [f for f in (*RUN_FILES, STATS_FILE, "leaderboard.jsonl") if (out / f).exists()]
    if leftovers and not overwrite:  # job.json deleted: still a run, refused before job.json is written
        raise UserError(f"{out} holds a search run's files ({', '.join(leftovers)}) without its {JOB_FILE}; pass "
                        "--overwrite to replace them or choose another --out")
    if overwrite and out.exists():
        for name in ("leaderboard.jsonl", "leaderboard.md", STATS_FILE):
            (out / name).unlink(missing_ok=True)
    io.write_json(job_file, job.to_dict())
    return job


def _save_stats(path: Path, stats: dict[str, LinearStats]) -> None:
    tensors = {}
    for name, s in stats.items():
        for key in ("x_mean_sq", "hessian", "grad_l1", "grad_l2"):
            value = getattr(s, key)
            if value is not None:
                tensors[f"{name}.{key}"] = value.contiguous()
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
    from ..models import find_decoder_layers, find_linears, weight_matrix

    try:
        stats = _load_stats(path)
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own errors on damaged bytes
        return None, f"{type(exc).__name__}: {str(exc).strip()[:120]}"
    layers_name, layers = find_decoder_layers(lm.model)
    for i, layer in enumerate(layers):
        for name, module in find_linears(layer).items():
            s = stats.get(f"{layers_name}.{i}.{name}")
            out_f, in_f = weight_matrix(module).shape
            if s is None or s.x_mean_sq is None or s.grad_l1 is None or s.grad_l2 is None:
                return None, f"no statistics for {layers_name}.{i}.{name}"
            if (tuple(s.x_mean_sq.shape) != (in_f,) or tuple(s.grad_l1.shape) != (out_f, in_f)
                    or tuple(s.grad_l2.shape) != (out_f, in_f)
                    or (wants_hessian(job) and (s.hessian is None or tuple(s.hessian.shape) != (in_f, in_f)))):
                return None, f"statistics of {layers_name}.{i}.{name} do not fit the model"
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
    from ..calib.gradients import load_or_compute_gradients

    start = time.perf_counter()
    needs = frozenset({"X", "H"} if wants_hessian(job) else {"X"})
    stats = collect_dense_stats(lm.model, calib_ids, needs, batch_size=job.nsamples, progress=progress)
    x_seconds = time.perf_counter() - start
    grads, grad_info = load_or_compute_gradients(lm.model, calib_ids, model_id=lm.path, data_id=job.calib_data,
                                                 seed=job.seed, progress=progress)
    # What recomputing the statistics per candidate would cost (bench/search_bench.py reads it).
    io.write_json(out / ("timing.json" if index == 0 else f"timing-{index}.json"),
                      {"statistics": x_seconds, "gradients": grad_info["seconds"], "gradients_cached": grad_info["cached"]})
    for name, (l1, l2) in grads.items():
        stats[name].grad_l1, stats[name].grad_l2 = l1, l2
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
        ids = self.calib_ids if seed == job.seed else calibration_windows(self.calib_tokens, job.nsamples, job.seqlen,
                                                                          seed, self.windowing)
        if not with_gradients:
            return ids, None
        if seed == job.seed:
            return ids, {n: (s.grad_l1, s.grad_l2) for n, s in self.fitness.stats.items() if s.grad_l1 is not None}
        from ..calib.gradients import load_or_compute_gradients

        self.fitness.restore()  # G of the dense model
        grads, _ = load_or_compute_gradients(self.lm.model, ids, model_id=self.lm.path, data_id=job.calib_data,
                                             seed=seed, progress=self.progress)
        return ids, grads


def _proxy_fitness(job: SearchJob, lm: LoadedModel, stats: dict[str, LinearStats]) -> ProxyFitness:
    """The search fitness over the job's search split (shared by this process and Ray workers)."""
    split = fitness_split(job.fitness_data, job.calib_data)
    windowing = windowing_for(lm.tokenizer, job.bos)
    search_tokens = tokenize(lm.tokenizer, load_text(job.fitness_data, split), windowing)
    return ProxyFitness(lm.model, search_tokens, stats, job.fitness_settings(),
                        data_info=describe_source(job.fitness_data, split), windowing=windowing)


def build_context(job: SearchJob, out: Path, progress: bool, index: int = 0) -> JobContext:
    """The loaded model, data and fitness of the job's index-th model (the only one, usually)."""
    model = job.models[index]
    spread = job.device_map != "none"
    lm = load_model(model, dtype=parse_dtype(job.dtype), device="cpu" if spread else resolve_device(job.device),
                    device_map=job.device_map if spread else None, max_memory=job.max_memory,
                    check_tokenizer=lambda tok: windowing_for(tok, job.bos))
    if has_offloaded_weights(lm.model):
        # Every candidate rewrites every weight: layers on disk or in accelerate's CPU store would be
        # written back once per candidate and per setting, far slower than the search is worth.
        raise UserError("the search needs every layer on a device, but the device map offloaded some "
                        "(give --max-memory more room, or use more GPUs)")
    windowing = windowing_for(lm.tokenizer, job.bos)
    calib_tokens = tokenize(lm.tokenizer, load_text(job.calib_data, calib_split(job.calib_data)), windowing)
    calib_ids = calibration_windows(calib_tokens, job.nsamples, job.seqlen, job.seed, windowing)
    report_tokens, report_info = {}, {}
    for source in job.report_sources:  # loaded before the search: unreachable data fails now, not in hours
        report_split = evaluation_split(source)
        name = source if len(job.models) == 1 else f"{source} @ {model}"
        report_tokens[name] = tokenize(lm.tokenizer, load_text(source, report_split), windowing)
        report_info[name] = describe_source(source, report_split)
        if len(job.models) > 1:
            report_info[name]["model"] = model
    stats = proxy_statistics(lm, job, calib_ids, out, progress, index)
    return JobContext(lm, calib_ids, _proxy_fitness(job, lm, stats), report_tokens, report_info, windowing, job,
                      calib_tokens, progress)


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
            raise UserError(f"{path} not found on this Ray node: the run folder must be on a filesystem every node sees")
        lm = load_model(self.job.models[0], dtype=parse_dtype(self.job.dtype), device=device)
        return _proxy_fitness(self.job, lm, _load_stats(path))


def run_job(job: SearchJob, out: Path, *, resume: bool = False, overwrite: bool = False,
            progress: bool = True, executor: ExecutorSpec = ExecutorSpec(),
            generations: int | None = None) -> dict[str, Any]:
    """Search, then the leaderboard. Returns {"result": SearchResult, "leaderboard": rows}.
    ``executor`` says where candidates are evaluated (not saved: resume may use another);
    ``generations`` (with resume) replaces the saved generation budget."""
    from .engine import run_search
    from .leaderboard import run_leaderboard

    out = Path(out)
    executor.check()  # e.g. Ray missing: say so before loading anything
    if not resume:
        validate_job(job)
    job = prepare_out_dir(out, job, resume, overwrite)
    if resume:  # a damaged log or checkpoint is refused now, not after the model and statistics load
        from .checkpoint import CONFIG, DAMAGED, RUN_FILES, inspect_run, read_config

        if (out / CONFIG).exists():
            read_config(out)
        elif any((out / f).exists() for f in RUN_FILES):
            raise UserError(f"cannot resume {short(out)}: its {CONFIG} (the run's settings) is missing: "
                            f"{DAMAGED.replace('restore it', 'restore ' + CONFIG)}")
        inspect_run(out)
    if executor.kind == "ray" and job.device_map != "none":
        raise UserError("--device-map spreads one model over several GPUs, Ray workers hold one model on one GPU "
                        "each: use --executor serial with --device-map")
    if resume and generations is not None and generations != job.search.generations:
        from .checkpoint import check_budget

        check_budget(out, generations)  # before job.json changes (run_search checks again, for API callers)
        job = replace(job, search=replace(job.search, generations=generations))
        io.write_json(out / JOB_FILE, job.to_dict())
    if executor.kind == "ray" and len(job.models) > 1:
        raise UserError("a search over several models runs with --executor serial (a Ray worker holds one model)")
    contexts = [build_context(job, out, progress, i) for i in range(len(job.models))]
    fitness = contexts[0].fitness if len(contexts) == 1 else MultiModelFitness([c.fitness for c in contexts],
                                                                               job.models)
    with executor.build(fitness, ProxyFitnessFactory(job, str(out.resolve())), use_gpus=job.device != "cpu") as ex:
        result = run_search(fitness, job.search, out, resume=resume, overwrite=overwrite, progress=progress,
                            executor=ex)
    rows: list[dict] = []
    report_info = {name: info for ctx in contexts for name, info in ctx.report_info.items()}
    for ctx in contexts:
        if ctx.report_tokens:
            rows = run_leaderboard(ctx, job, result.hall_of_fame, out, progress, report_info)
    return {"result": result, "leaderboard": rows, "job": job}
