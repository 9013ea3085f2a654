"""A whole search job: its settings (``SearchJob``, saved as job.json), their checks, and its run folder.

A job is one ``prunerzero search``: a proxy model, its statistics computed once, the GP run, then the
leaderboard. Everything lands in the run folder as it happens:
  job.json            the job's settings (resume reads them back; a different job is refused)
  stats.safetensors   X and G of the dense proxy model, computed once (``context``)
  evaluations.jsonl, checkpoint.json, hall_of_fame.json, best_metric.txt, best_tree.json  (engine)
  leaderboard.jsonl   one line per (metric, setting) re-evaluated on the reporting data
  leaderboard.md      the final side-by-side table
``run.run_job`` runs a job; ``context`` loads what it needs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import io
from ..data import LOCAL_SOURCES
from ..errors import UserError, clip, known_keys_only, path_kind, short
from ..masks import parse_setting
from ..models import check_placement, parse_dtype
from ..windows import check_bos_mode
from .config import SearchConfig
from .fitness import FitnessSettings

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


