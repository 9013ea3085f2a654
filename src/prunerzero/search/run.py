"""``run_job``: a whole search job -- check it, claim or reopen its folder, load what it needs
(``context``), run the GP (``engine``), then the leaderboard."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError, short
from .checkpoint import CONFIG, DAMAGED, RUN_FILES, check_budget, inspect_run, read_config
from .context import ProxyFitnessFactory, build_context
from .engine import run_search
from .executors import ExecutorSpec
from .fitness import MultiModelFitness
from .job import JOB_FILE, SearchJob, prepare_out_dir, validate_job
from .leaderboard import run_leaderboard


def run_job(job: SearchJob, out: Path, *, resume: bool = False, overwrite: bool = False,
            progress: bool = True, executor: ExecutorSpec = ExecutorSpec(),
            generations: int | None = None) -> dict[str, Any]:
    """Search, then the leaderboard. Returns {"result": SearchResult, "leaderboard": rows}.
    ``executor`` says where candidates are evaluated (not saved: resume may use another);
    ``generations`` (with resume) replaces the saved generation budget."""
    out = Path(out)
    executor.check()  # e.g. Ray missing: say so before loading anything
    if not resume:
        validate_job(job)
    job = prepare_out_dir(out, job, resume, overwrite)
    if resume:  # a damaged log or checkpoint is refused now, not after the model and statistics load
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
