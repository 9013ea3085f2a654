"""Perplexity of several methods over a range of sparsities, with one calibration pass in all.

The one-shot variant, on purpose: the dense model's statistics (X, H when SparseGPT is swept,
G when a method's metric uses it) are computed ONCE, a copy of the dense weights is kept, and
every (method, sparsity) writes its pruned weights from that copy with ``Method.prune`` per
linear -- the same per-linear function ``prunerzero prune`` calls -- then measures perplexity.
``prunerzero prune`` instead re-collects each layer's statistics after the earlier layers are
pruned (the papers' sequential pipeline); doing that here would cost one calibration pass per
point, i.e. 30 passes for 4 methods x 8 sparsities instead of one.

Files in the out dir: ``sweep_settings.json`` (what the numbers depend on; a rerun must match it
unless ``overwrite``), ``sweep.jsonl`` (one line per measured point, appended and fsync'd as it is
measured, so a killed sweep resumes where it stopped), and the reports ``sweep.json``,
``sweep.md`` and ``sweep.png``, rewritten atomically after every point.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..errors import UserError, one_line, short, warn
from ..eval.perplexity import perplexity
from ..memory import release_free_heap
from .config import LOG, JSON, MD, PNG, REDO, SETTINGS, SweepConfig, point_key, sparsity_grid

def build_methods(cfg: SweepConfig) -> dict[str, Any]:
    """name -> Method; unknown names fail here with a did-you-mean, before anything is loaded."""
    from ..methods import METHODS, get_method

    if not cfg.methods:
        raise UserError("--methods is empty")
    out = {}
    for name in cfg.methods:
        METHODS.get(name)  # raises UserError
        out[name] = get_method(name, percdamp=cfg.percdamp, blocksize=cfg.blocksize) if name == "sparsegpt" \
            else get_method(name)
    return out


# ----------------------------------------------------------------------------- out dir
def prepare_out_dir(out: Path, cfg: SweepConfig, overwrite: bool) -> list[dict[str, Any]]:
    """Check DIR against this sweep's settings; returns the points already measured there."""
    settings = json.loads(json.dumps(cfg.settings()))
    saved_path = out / SETTINGS
    if saved_path.exists() and not overwrite:
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8 text
            raise UserError(f"{saved_path} is damaged ({one_line(exc, 200)}): pass --overwrite to start the "
                            "sweep again, or choose another --out") from None
        if not isinstance(saved, dict):
            raise UserError(f"{saved_path} is damaged (not a JSON object): pass --overwrite to start the sweep "
                            "again, or choose another --out")
        diffs = [f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
                 if saved.get(k) != settings.get(k)]
        if diffs:
            raise UserError(f"{out} holds a sweep with other settings ({'; '.join(diffs)}); "
                            "pass --overwrite or choose another --out")
        scan = io.scan_jsonl(out / LOG, _check_point, hint=REDO)
        if scan.torn is not None:
            warn(f"{short(out / LOG)} ended with a torn line (a kill while it was written): that point is measured "
                 "again")
        io.repair_jsonl(out / LOG, scan)  # a torn last line is cut off, so appends start on a fresh line
        return scan.records
    if overwrite:
        for name in (SETTINGS, LOG, JSON, MD, PNG):
            (out / name).unlink(missing_ok=True)
    elif (out / LOG).exists():
        raise UserError(f"{out} has a {LOG} but no {SETTINGS}; pass --overwrite or choose another --out")
    io.write_json(saved_path, settings)
    return []


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _check_point(r: dict[str, Any], where: str) -> None:
    """A sweep.jsonl line as run_sweep wrote it: method, sparsity, and a perplexity (None = invalid)."""
    ok = (isinstance(r.get("method"), str) and _finite_number(r.get("sparsity"))
          and (r.get("ppl") is None or _finite_number(r["ppl"]))
          and (r["method"] != "dense" or (_finite_number(r.get("ppl")) and _finite_number(r.get("tokens")))))
    if not ok:
        raise UserError(f"{where} is damaged (not a measured point): {REDO}")


# ----------------------------------------------------------------------------- the sweep
class DenseState:
    """The loaded model, its dense weights and the cached statistics every point reuses."""

    def __init__(self, cfg: SweepConfig, methods: dict[str, Any], progress: bool) -> None:
        from ..snapshot import DenseSnapshot

        self.lm, self.windowing = cfg.open_model()
        cfg.check_calib_fits(self.lm)
        cfg.check_eval_fits(self.lm)
        self.test_tokens, _ = cfg.test_tokens(self.lm, self.windowing)
        # every point is pruned from the dense weights, never from a pruned model
        self.snapshot = DenseSnapshot(self.lm.model)
        self.needs = frozenset().union(*(m.needs for m in methods.values()))
        self.info: dict[str, Any] = {"needs": sorted(self.needs), "seconds": {}, "windowing": self.windowing.to_dict()}
        self.calib_ids = None
        if self.needs & {"X", "H", "G"}:
            self.calib_ids = cfg.calibration_windows(cfg.calibration_tokens(self.lm, self.windowing), self.windowing)
            release_free_heap()
        self.stats = self._statistics(cfg, progress)

    def _statistics(self, cfg: SweepConfig, progress: bool) -> dict[str, Any]:
        from ..calib.stats import LinearStats, attach_gradients
        from ..pipeline import collect_dense_stats

        t = time.perf_counter()
        act = self.needs & {"X", "H"}
        if act:
            stats = collect_dense_stats(self.lm.model, self.calib_ids, frozenset(act), batch_size=cfg.batch_size,
                                        progress=progress)
        else:
            stats = {n: LinearStats() for n in self.snapshot.linears}
        self.info["seconds"]["activations"] = time.perf_counter() - t
        if "G" in self.needs:  # only when a swept metric reads G: gradients cost a backward per sample
            t = time.perf_counter()
            grads, ginfo = cfg.dense_gradients(self.lm, self.calib_ids, file=cfg.gradients, progress=progress)
            attach_gradients(stats, grads)
            self.info["gradients"] = {k: v for k, v in ginfo.items() if k in ("file", "cache_file", "cached")}
            self.info["seconds"]["gradients"] = time.perf_counter() - t
        return stats

    @property
    def dense(self) -> dict[str, torch.Tensor]:
        """The kept dense weights, (out, in) in the model's dtype, by full linear name."""
        return self.snapshot.dense

    def apply(self, method: Any, target: Any) -> float:
        """Write ``method``'s pruned weights (from the dense snapshot) into the model; returns the
        share of zeros in the prunable linears."""
        # Statistics wait on the CPU; a GPU run moves one linear's at a time.
        def prune(name: str, weight: torch.Tensor) -> torch.Tensor:
            return method.prune(weight, self.stats[name].to(weight.device), target)

        return self.snapshot.apply(prune, count_zeros=True)

    def restore(self) -> None:
        self.snapshot.restore()


def _measure(state: DenseState, cfg: SweepConfig) -> dict[str, Any]:
    r = perplexity(state.lm.model, state.test_tokens, cfg.effective_eval_seqlen, cfg.eval_tokens, progress=False,
                   windowing=state.windowing)
    return {"ppl": r["ppl"], "nll": r["nll"], "tokens": r["tokens"], "eval_seconds": r["seconds"]}


def validate(cfg: SweepConfig) -> tuple[list[float], dict[str, Any]]:
    """Every cheap check, before loading anything big (each settings group checks its own fields)."""
    grid = sparsity_grid(cfg)
    methods = build_methods(cfg)
    if "sparsegpt" in methods and cfg.pattern == "unstructured":
        from ..masks import SparsityTarget
        from ..methods.sparsegpt import check_sparsegpt_group

        check_sparsegpt_group(SparsityTarget(0.5, group=cfg.group))
    cfg.check_pruning()
    if cfg.eval_data is None:
        raise UserError("a sweep measures perplexity: pass --eval-data (wikitext2, a text file, ...)")
    cfg.check_model()
    needs = frozenset().union(*(m.needs for m in methods.values()))
    cfg.check_calibration(reads_text=bool(needs & {"X", "H", "G"}))
    cfg.check_eval()
    cfg.check_model_path()
    return grid, methods


def run_sweep(cfg: SweepConfig, out: Path | str, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Measure every (method, sparsity) not yet in ``out/sweep.jsonl``; write the reports."""
    from tqdm.auto import tqdm

    from ..masks import parse_target
    from ..symbolic import InvalidMetricError
    from .report import write_reports

    out = Path(out)
    grid, methods = validate(cfg)
    io.check_writable_dir(out, "--out")  # before loading anything
    out.mkdir(parents=True, exist_ok=True)
    records = prepare_out_dir(out, cfg, overwrite)
    done = {point_key(r["method"], r["sparsity"]) for r in records}
    todo = [(name, s) for name in methods for s in grid if point_key(name, s) not in done]
    need_dense = point_key("dense", 0.0) not in done
    info: dict[str, Any] = {}
    if todo or need_dense:
        state = DenseState(cfg, {n: methods[n] for n in {n for n, _ in todo}}, progress)
        info = state.info
        try:
            if need_dense:
                rec = {"method": "dense", "sparsity": 0.0, "actual_sparsity": 0.0, **_measure(state, cfg),
                       "time": time.time()}
                io.append_jsonl(out / LOG, rec)
                records.append(rec)
            for name, s in tqdm(todo, desc="sweep", unit="point", disable=not progress):
                target = parse_target(s, cfg.pattern, cfg.group)
                rec = {"method": name, "sparsity": s, "pattern": cfg.pattern}
                t = time.perf_counter()
                try:
                    rec["actual_sparsity"] = state.apply(methods[name], target)
                    rec["prune_seconds"] = time.perf_counter() - t
                    rec.update(_measure(state, cfg))
                except InvalidMetricError as exc:  # NaN/constant scores: a result, not a crash
                    rec.update(ppl=None, error=str(exc))
                rec["time"] = time.time()
                io.append_jsonl(out / LOG, rec)
                records.append(rec)
                write_reports(out, cfg, grid, records, info, figure=False)
        finally:
            state.restore()
    return write_reports(out, cfg, grid, records, info)
