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

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import io
from ..data import LOCAL_SOURCES
from ..errors import UserError, clip, known_keys_only, path_kind, short
from ..settings import ROW_BAND, CalibSettings, DeviceMapSettings, LeverSettings, check_types, option
from .config import SearchConfig

if TYPE_CHECKING:
    from .fitness import FitnessSettings

JOB_FILE = "job.json"
STATS_FILE = "stats.safetensors"


@dataclass(frozen=True, kw_only=True)
class SearchJob(DeviceMapSettings, CalibSettings, LeverSettings):
    """The shared groups of ``settings`` (model and placement, calibration, levers; the levers apply to
    every candidate and every leaderboard entry) plus what only a search has."""

    model: str = option("smollm2-135m", "a local Hugging Face folder, a hub id, a .gguf file, or smollm2-135m / "
                        "gemma3-270m / qwen2.5-coder-0.5b; "
                        "several, comma-separated: the fitness is their geometric mean")
    settings: tuple[str, ...] = option(("0.5",), 'several sparsity settings scored together by geometric-mean '
                                       'perplexity, e.g. "0.5,2:4" (a bare number is unstructured, compared per '
                                       'output row; "0.5:layer" compares across the whole layer, "0.5:band" too '
                                       f'with each row losing within {ROW_BAND:g} of 0.5)', items=str)
    fitness_data: str = option("general", "scored on its search split (general: 20% of the mix's documents; lambada: "
                               "last 20% of passages; squad: last 20% of articles)")
    fidelity_tokens: tuple[int, ...] = option((1024, 4096), "perplexity token budgets, cheapest first (when no "
                                              "--ladder)", items=int)
    ladder: tuple[str, ...] = option((), "fidelity rungs, cheapest first: err (layer output error, no forward pass), "
                                     "kl:N (KL from the dense model on N tokens), ppl:N (perplexity), seq:N (the full "
                                     "sequential pipeline, then perplexity); `prunerzero search` uses "
                                     "ppl:1024,seq:4096 unless --ladder or --fidelity-tokens is given", items=str)
    seq_nsamples: int = option(32, "calibration windows the seq rung's sequential pipeline prunes with (the first "
                               "ones; all of them by default, as the final prune)")
    terminal_scale: str = option("raw", "layer: scale-free W, X, G (each divided by its mean over the layer), so sums "
                                 "of terms balance the same way on every model; the winner is saved with it in "
                                 "best_metric.json", flag="--terminals", choices=("raw", "layer"))
    eval_dtype: str = option("float32", "float32 or bfloat16 for fitness forwards (autocast: about 2.5x faster on "
                             "CPUs with AMX)")
    report_data: str | None = option("wikitext2", "reporting texts for the leaderboard, comma-separated: wikitext2, "
                                     "qasper (NLP papers), a file")
    report_tokens: int | None = option(None, "first N tokens of the reporting set")
    calib_seeds: tuple[int, ...] = option((), "the leaderboard prunes with each of these calibration draws and reports "
                                          "mean and spread (default: --seed only)", items=int)
    leaderboard_top: int = option(3, "searched metrics on the leaderboard")
    baselines: tuple[str, ...] = option(("magnitude", "wanda", "gblm", "ria", "pruner-zero"),
                                        "methods measured next to the searched metrics, a comma list, or none",
                                        items=str, none="none")
    search: SearchConfig = field(default_factory=SearchConfig)

    # job.json as it has always been written
    KEY_ORDER: ClassVar[tuple[str, ...]] = (
        "model", "settings", "calib_data", "nsamples", "seqlen", "seed", "bos", "fitness_data", "fidelity_tokens",
        "ladder", "terminal_scale", "seq_nsamples", "eval_dtype", "device", "dtype", "device_map", "max_memory",
        "report_data", "report_tokens", "calib_seeds", "leaderboard_top", "baselines", "reconstruct",
        "reconstruct_mode", "mask_only", "allocation", "owl_m", "owl_lambda", "search")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "search": self.search.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, what: str = "job.json") -> "SearchJob":
        """A job read back from job.json; every value of its declared type, or one UserError."""
        data = known_keys_only(data, cls.field_names(), what)
        data.setdefault("bos", "none")  # runs saved before the BOS rule cut every window without BOS
        check_types(cls, {k: v for k, v in data.items() if k not in ("search", "fidelity_tokens", "calib_seeds")},
                    what)
        for key in ("fidelity_tokens", "calib_seeds"):
            ints = data.get(key, [])
            if not isinstance(ints, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ints):
                raise UserError(f"{what}: {key} must be a list of integers")
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
    def leaderboard_settings(self) -> tuple[str, ...]:
        """The search's settings and, for each one compared across the layer ('0.5:layer', '0.5:band'), its per-row
        twin ('0.5'), so that the leaderboard holds every metric in both comparison groups: the
        hand-made metrics were made per row (Wanda's across a layer is far worse), and the best of
        either group is what a searched metric has to beat."""
        from ..masks import per_row_twin

        out = list(self.settings)
        for s in self.settings:
            twin = per_row_twin(s)
            if twin is not None and twin not in out and f"{twin}:row" not in out:
                out.append(twin)
        return tuple(out)

    @property
    def leaderboard_seeds(self) -> tuple[int, ...]:
        return self.calib_seeds or (self.seed,)

    def fitness_settings(self) -> FitnessSettings:
        from .fitness import FitnessSettings

        return FitnessSettings(self.settings, self.fidelity_tokens, self.seqlen, self.eval_dtype,
                               reconstruct=self.reconstruct, reconstruct_mode=self.reconstruct_mode,
                               mask_only=self.mask_only,
                               allocation=self.allocation, owl_m=self.owl_m, owl_lambda=self.owl_lambda,
                               ladder=self.ladder, terminal_scale=self.terminal_scale, seq_nsamples=self.seq_nsamples)


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
    from ..masks import parse_setting
    from ..methods import METHODS

    if not job.models:
        raise UserError("--model is empty")
    if len(set(job.models)) != len(job.models):
        raise UserError(f"--model names a model twice: {clip(job.model, 200)}")
    job.check_calibration()
    check_source(job.fitness_data, "--fitness-data")
    for source in job.report_sources:
        check_source(source, "--report-data")
    targets = []
    for s in job.settings:
        try:
            targets.append(parse_setting(s))
        except (ValueError, ZeroDivisionError):  # "a:b", "1:0": not numbers the setting parser can use
            raise UserError(f"--settings: {clip(s, 40)} is not a sparsity setting (e.g. 0.5, 0.6:unstructured, "
                            "2:4)") from None
    if not job.fidelity_tokens or list(job.fidelity_tokens) != sorted(job.fidelity_tokens):
        raise UserError("--fidelity-tokens must be ascending token budgets, e.g. 1024,4096")
    if job.fidelity_tokens[0] < job.seqlen:
        raise UserError(f"the cheapest fidelity ({job.fidelity_tokens[0]} tokens) is less than one window of "
                        f"{job.seqlen}")
    rungs = job.fitness_settings().rungs()
    if len({r.name for r in rungs}) != len(rungs):
        raise UserError(f"--ladder names a rung twice: {','.join(job.ladder)}")
    if any(r.kind == "seq" for r in rungs) and job.seq_nsamples < 1:  # more than --nsamples: all of them
        raise UserError(f"--seq-nsamples must be >= 1, not {job.seq_nsamples}")
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
    job.check_model()
    if job.terminal_scale not in ("raw", "layer"):
        raise UserError(f"--terminals must be raw or layer, not {job.terminal_scale!r}")
    for name in job.baselines:
        METHODS.get(name)
    if "sparsegpt" in job.baselines:
        from ..methods.sparsegpt import check_sparsegpt_group

        for target in targets:
            check_sparsegpt_group(target)
    if job.search.owl_lambdas and job.allocation != "owl":
        raise UserError("--owl-lambdas evolves OWL's lambda: it needs --allocation owl")
    job.check_levers(targets, job.search.owl_lambdas)
    for model in job.models:
        job.check_model_path(model)  # last: it may convert a GGUF file (once)


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


