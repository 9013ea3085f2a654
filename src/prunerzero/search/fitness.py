"""Fitness of a candidate metric: perplexity of the proxy model pruned by it (lower is better).

Fast path: the activation statistics X (dense model, one pass per layer) and the gradient
statistics G are computed once per run; a candidate then costs its masks (pure tensor math over
every prunable linear, from the kept dense weights, ``snapshot``) plus a short perplexity
evaluation on the *search* split, text disjoint from the calibration windows and from the
reporting set (WikiText-2 test is never used here).

Several sparsity settings combine by the geometric mean of their values (mean log-ppl for
perplexity), so a metric must be good at all of them and no setting dominates by scale.
Fidelities are the rungs of a ladder (``proxies``): perplexity or KL divergence from the dense
model on a token budget of the search split (each budget a prefix of the larger ones), or ``err``,
the relative layer output error from the dense Hessians, with no forward pass at all.

Levers beyond the mask (issue "beyond metrics"), fixed for a run:
- ``reconstruct="admm"``: after the candidate's mask, the best weights for that mask
  (``methods.admm``; no per-run factor to share, several times the cost of OBS per candidate).
- ``reconstruct="obs"``: after the candidate's mask, the OBS update of ``methods.reconstruct``
  with each linear's dense Hessian; the inverse-Hessian factors are computed once per run, so a
  candidate pays only the column sweeps (the cost per candidate is in docs/BENCHMARKS.md).
- ``allocation="owl"``: OWL's per-layer sparsities from the dense X and W, computed once per
  run; unstructured settings only (N:M settings stay uniform). A candidate's ``owl_lambda``
  gene (``Metric.genes``, when the search evolves lambda) replaces the run's lambda.
- ``mask_only``: with ``block`` / ``gradual``, the mask the update chose on the dense weights,
  the update discarded (the sequential choice of the mask, scored as a mask).
Like every fast-path statistic, H is the *dense* model's: the full sequential pipeline (the
leaderboard, ``prunerzero prune``) recomputes it from each pruned layer's inputs.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..allocation import Allocation, owl_allocation, owl_sparsities
from ..calib.stats import LinearStats
from ..errors import UserError
from ..eval.perplexity import logits_chunks, window_nll
from ..masks import SparsityTarget, parse_setting, prune_weight
from ..methods.base import Method
from ..methods.obs import inverse_hessian_factor
from ..methods.reconstruct import dense_under_mask, mask_only, reconstruct_prune, with_reconstruction
from ..methods.symbolic import metric_scorers
from ..models import weight_matrix
from ..placement import input_device
from ..precision import bf16_autocast
from ..snapshot import DenseSnapshot, PruneOne
from ..symbolic import InvalidMetricError, Metric, TerminalSpec
from ..windows import NO_BOS, Windowing, eval_windows
from .bf16_weights import Bf16Weights
from .proxies import Rung, dense_top_k, kl_top_k, parse_rung, relative_output_error


SCORE_CACHE_BYTES = 2 * 2**30  # float32 scores of every linear kept across the settings of one evaluation


@dataclass(frozen=True)
class FitnessSettings:
    settings: tuple[str, ...] = ("0.5",)  # sparsity settings, combined by geometric mean
    fidelity_tokens: tuple[int, ...] = (1024, 4096)  # perplexity rungs, cheapest first (when no ladder)
    eval_seqlen: int = 512
    eval_dtype: str = "float32"  # bfloat16 = autocast forwards (~2.5x faster on AMX CPUs)
    reconstruct: str = "none"  # or "obs", "admm"
    reconstruct_mode: str = "fixed"  # or "block" (obs), "gradual" (admm)
    mask_only: bool = False  # keep the mask the update chose (block / gradual), discard the update
    percdamp: float = 0.01
    blocksize: int = 128
    allocation: str = "uniform"  # or "owl"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    ladder: tuple[str, ...] = ()  # rungs (proxies.parse_rung), cheapest first; replaces fidelity_tokens
    terminal_scale: str = "raw"  # "layer": scale-free terminals (symbolic.terminals) for every candidate
    seq_nsamples: int = 32  # calibration windows the seq rung's sequential pipeline uses (the first ones)

    def rungs(self) -> list[Rung]:
        return [parse_rung(r) for r in self.ladder] if self.ladder else [Rung("ppl", t) for t in self.fidelity_tokens]

    def to_dict(self) -> dict:
        """As recorded in a run's config.json: fields added later are left out at their default, so
        a run started before them still resumes (resume compares this record)."""
        d = asdict(self)
        for key, default in (("ladder", ()), ("terminal_scale", "raw"), ("seq_nsamples", 32), ("mask_only", False)):
            if d[key] == default or (isinstance(default, tuple) and d[key] == list(default)):
                del d[key]
        return d

    @property
    def spec(self) -> TerminalSpec:
        """The meaning of W, X, G for every candidate (the engine reads ``fitness.spec``)."""
        return TerminalSpec(scale=self.terminal_scale)

    def wrap(self, method: Method) -> Method:
        """`method` with this run's reconstruction (methods that do not score weights, such as
        sparsegpt, keep their own: they reconstruct already), and with --mask-only the mask alone
        (sparsegpt's too: every entry is measured under the same lever)."""
        if self.reconstruct != "none" and method.score is not None:
            method = with_reconstruction(method, self.reconstruct_mode, percdamp=self.percdamp,
                                         blocksize=self.blocksize, kind=self.reconstruct)
        return mask_only(method) if self.mask_only else method


@dataclass
class ProxyFitness:
    """Implements the search engine's Fitness protocol over an in-memory model."""

    model: nn.Module
    search_tokens: torch.Tensor  # (1, N) token ids of the search split
    stats: dict[str, LinearStats]  # full linear name -> X (and G, H) of the dense model
    config: FitnessSettings = field(default_factory=FitnessSettings)
    data_info: dict = field(default_factory=dict)
    windowing: Windowing = NO_BOS  # how the search split is cut into windows (the run's BOS rule)
    calib_ids: torch.Tensor | None = None  # (n, seqlen) the run's calibration windows: the seq rung prunes with them

    def __post_init__(self) -> None:
        self.snapshot = DenseSnapshot(self.model)  # every candidate starts from the dense weights
        # bf16 forwards of plain masks on CPU: the masks are written as bf16 copies (bf16_weights.py)
        self._bf16 = (Bf16Weights(self.model, self.snapshot.linears)
                      if self.config.eval_dtype == "bfloat16" and self.config.reconstruct == "none"
                      and Bf16Weights.supported(self.model, self.snapshot.linears) else None)
        # A candidate's scores do not depend on the sparsity setting: within one evaluation they are
        # computed once and reused by every setting, when they fit SCORE_CACHE_BYTES.
        self._score_cache: dict[str, torch.Tensor] | None = None
        self.targets = [parse_setting(s) for s in self.config.settings]
        # A setting compared across the layer ('0.5:layer', '0.5:band'): the engine's duplicate and invariance
        # checks must look at such a mask too (a factor constant per row changes it).
        self.layer_group = any(not t.structured and t.group != "row" for t in self.targets)
        self.rungs = {r.name: r for r in self.config.rungs()}
        if len(self.rungs) != len(self.config.rungs()):
            raise UserError(f"the fidelity ladder names a rung twice: {', '.join(self.config.ladder)}")
        self.fidelities = tuple(self.rungs)
        self._windows = {}
        for rung in self.rungs.values():
            if rung.needs_forward:
                windows = eval_windows(self.search_tokens, self.config.eval_seqlen, rung.tokens, self.windowing)
                if windows.numel() < rung.tokens - self.config.eval_seqlen + 1:
                    raise UserError(f"the search text has {self.search_tokens.numel()} tokens, fewer than the "
                                    f"{rung.tokens} fidelity {rung.name} asks for")
                self._windows[rung.name] = windows
        if any(r.kind == "seq" for r in self.rungs.values()) and self.calib_ids is None:
            raise UserError("the seq fidelity needs the run's calibration windows")
        if any(r.kind == "err" for r in self.rungs.values()) and any(s.hessian is None for s in self.stats.values()):
            raise UserError("the err fidelity needs the Hessians (H) of the dense model's statistics")
        self.seconds = {"masks": 0.0, "eval": 0.0}
        self.spec = self.config.spec
        self._hinv: dict[str, torch.Tensor] = {}  # inverse-Hessian factors, filled on first use
        self.allocation: Allocation | None = None
        if self.config.allocation == "owl":
            # Outlier ratios of the dense model (sparsity only shifts them; 0.5 is a placeholder).
            self.allocation = owl_allocation(self.model, self.stats, 0.5, self.config.owl_m, self.config.owl_lambda)
        self._kl_reference = self._dense_top_k()

    @property
    def dense(self) -> dict[str, torch.Tensor]:
        """The kept dense weights, (out, in) in the model's dtype, by full linear name."""
        return self.snapshot.dense

    @property
    def linears(self) -> dict[str, nn.Module]:
        """Every prunable decoder linear by full name."""
        return self.snapshot.linears

    def _autocast(self):
        device_type = next(self.model.parameters()).device.type
        return bf16_autocast(device_type, enabled=self.config.eval_dtype == "bfloat16")

    @torch.no_grad()
    def _dense_top_k(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The dense model's top-k next tokens on the largest KL rung's windows (its prefixes serve
        the smaller rungs), computed once, before any candidate touches the weights."""
        kl = [r for r in self.rungs.values() if r.kind == "kl"]
        if not kl:
            return None
        windows = self._windows[max(kl, key=lambda r: r.tokens).name]
        ids, logp = [], []
        with self._autocast():
            for batch in windows.split(4):
                for _, logits in logits_chunks(self.model, batch.to(input_device(self.model))):
                    i, lp = dense_top_k(logits)
                    ids.append(i.cpu())
                    logp.append(lp.cpu())
        return torch.cat(ids), torch.cat(logp)  # (positions, k) each

    def layer_sparsities(self, target: SparsityTarget, owl_lambda: float | None = None) -> list[float] | None:
        """Per decoder layer sparsity under this run's allocation, None when uniform. `owl_lambda`
        (a candidate's gene, when the search evolves it) overrides the run's lambda."""
        if self.allocation is None or target.structured:
            return None
        a = self.allocation
        lam = self.config.owl_lambda if owl_lambda is None else owl_lambda
        return owl_sparsities(a.outlier_ratio, target.sparsity, lam, a.layer_numel)

    def _hinv_of(self, name: str) -> torch.Tensor:
        if name not in self._hinv:
            hessian = self.stats[name].hessian  # (in, in), kept on the CPU
            # Linears that read the same input (q, k, v; gate, up) have equal Hessians: one factor
            # for them all, so the factors kept on the GPU for the run cost 4(3h^2 + i^2) per layer, not 4(6h^2 + i^2).
            for other, factor in self._hinv.items():
                layer_of = self.snapshot.layer_of
                if layer_of[other] == layer_of[name] and torch.equal(self.stats[other].hessian, hessian):
                    self._hinv[name] = factor
                    break
            else:
                self._hinv[name] = inverse_hessian_factor(hessian.to(self.dense[name].device), self.config.percdamp)
        return self._hinv[name]

    def describe(self) -> dict:
        out = {**self.config.to_dict(), "data": self.data_info,
               "windows": {k: int(v.shape[0]) for k, v in self._windows.items()}}
        if self.windowing.bos != "none":  # runs without BOS keep their earlier description (resume compares it)
            out["windowing"] = self.windowing.to_dict()
        return out

    def _pruning(self, metric: Metric, target: SparsityTarget) -> PruneOne:
        """The candidate's pruning of one linear: (name, dense float32 weight (out, in)) -> pruned weight."""
        layer_sparsity = self.layer_sparsities(target, dict(metric.genes).get("owl_lambda"))
        cfg = self.config

        score, rescore = metric_scorers(metric)  # rescore: the block sweep's later groups

        def reconstructed(name: str, weight: torch.Tensor) -> torch.Tensor:  # weight (out, in) float32
            stats = self.stats[name]
            layer = self.snapshot.layer_of[name]
            t = target if layer_sparsity is None else target.with_sparsity(layer_sparsity[layer])
            if cfg.reconstruct == "obs":
                return reconstruct_prune(weight, stats, t, score, cfg.reconstruct_mode, percdamp=cfg.percdamp,
                                         blocksize=cfg.blocksize, hinv=self._hinv_of(name), rescore=rescore)
            if cfg.reconstruct == "admm":
                return reconstruct_prune(weight, stats.to(weight.device), t, score, cfg.reconstruct_mode, kind="admm",
                                         percdamp=cfg.percdamp)
            return prune_weight(weight, score(weight, stats), t)

        if not cfg.mask_only:
            return reconstructed

        def masked(name: str, weight: torch.Tensor) -> torch.Tensor:  # the update's mask on the dense weight
            return dense_under_mask(weight, reconstructed(name, weight))

        return masked

    @torch.no_grad()
    def apply(self, metric: Metric, target: SparsityTarget) -> None:
        """Write the candidate's pruned weights into the model, or, for bf16 forwards of plain masks
        on CPU, into the bf16 copies the next ``measure`` puts in the model (raises InvalidMetricError)."""
        start = time.perf_counter()
        if self.config.reconstruct == "none":
            self._apply_mask_only(metric, target)
        else:
            self.snapshot.apply(self._pruning(metric, target))
        self.seconds["masks"] += time.perf_counter() - start

    def _apply_mask_only(self, metric: Metric, target: SparsityTarget) -> None:
        """The plain mask, written in place: the dense weight times the kept entries straight into the
        module (no temporary weight), the scores taken from this evaluation's cache."""
        layer_sparsity = self.layer_sparsities(target, dict(metric.genes).get("owl_lambda"))
        for name, module in self.snapshot.linears.items():
            dense = self.snapshot.dense[name]  # (out, in) in the model's dtype
            score = self._score_cache.get(name) if self._score_cache is not None else None
            if score is None:
                stats = self.stats[name]
                score = metric.scores(dense.float(), stats.x_mean_sq, stats.grad_l1, stats.grad_l2)  # (out, in)
                if self._score_cache is not None:
                    self._score_cache[name] = score
            t = target if layer_sparsity is None else target.with_sparsity(layer_sparsity[self.snapshot.layer_of[name]])
            prune_weight(dense, score, t, out=self._bf16.target(name) if self._bf16 else weight_matrix(module))

    def restore(self) -> None:
        """The dense weights back into the model."""
        if self._bf16 is not None:
            self._bf16.holds_candidate = False
        self.snapshot.restore()

    @torch.no_grad()
    def output_error(self, metric: Metric, target: SparsityTarget) -> float:
        """Mean relative layer output error of the candidate's pruning (the err rung; no forward)."""
        start = time.perf_counter()
        errors = [relative_output_error(self.dense[name].float(), new, self.stats[name].hessian.to(new.device))
                  for name, _, new in self.snapshot.pruned(self._pruning(metric, target))]
        self.seconds["masks"] += time.perf_counter() - start
        return sum(errors) / len(errors)

    @torch.no_grad()
    def _mean_kl(self, windows: torch.Tensor) -> float:
        ref_ids, ref_logp = self._kl_reference
        total, count, offset = 0.0, 0, 0
        for batch in windows.split(4):
            for rows, logits in logits_chunks(self.model, batch.to(input_device(self.model))):
                n = rows.stop - rows.start
                kl = kl_top_k(logits, ref_ids[offset: offset + n].to(logits.device),
                              ref_logp[offset: offset + n].to(logits.device))
                total += float(kl.double().sum())
                count += n
                offset += n
        return total / count

    @torch.no_grad()
    def prune_sequentially(self, metric: Metric, target: SparsityTarget) -> None:
        """The seq rung's pruning: the full pipeline from the dense weights, each layer's X (and H)
        from the already pruned layers below, on the first ``seq_nsamples`` calibration windows (float32
        forwards); G (dense-model gradients) from the run's statistics, as the leaderboard does."""
        from ..methods.symbolic import symbolic_method
        from ..pipeline import prune_model

        start = time.perf_counter()
        self.restore()
        lam = dict(metric.genes).get("owl_lambda")
        layer_sparsity = self.layer_sparsities(target, lam)
        target_for = target if layer_sparsity is None else (lambda i: target.with_sparsity(layer_sparsity[i]))
        grads = {n: (s.grad_l1, s.grad_l2) for n, s in self.stats.items() if s.grad_l1 is not None}
        ids = self.calib_ids[: self.config.seq_nsamples]
        # Calibration forwards in float32, as `prunerzero prune` runs them: with bf16 forwards the rung
        # ranked the best quarter of metrics at 2:4 worse (Spearman 0.75 vs 0.96, docs/BENCHMARKS.md
        # "fitness"); only the perplexity after it uses the fitness's eval dtype.
        prune_model(self.model, self.config.wrap(symbolic_method(metric)), target_for, ids, grads=grads,
                    progress=False)
        self.seconds["masks"] += time.perf_counter() - start

    def measure(self, rung: Rung) -> float:
        """The rung's value for the weights now in the model (ppl rungs: the mean NLL)."""
        windows = self._windows[rung.name]
        start = time.perf_counter()
        with self._autocast(), (self._bf16.in_model() if self._bf16 else contextlib.nullcontext()):
            value = self._mean_kl(windows) if rung.kind == "kl" else float(window_nll(self.model, windows).mean())
        self.seconds["eval"] += time.perf_counter() - start
        return value

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        rung = self.rungs[fidelity]
        logs = []
        numel = sum(w.numel() for w in self.snapshot.dense.values())
        if len(self.targets) > 1 and 4 * numel <= SCORE_CACHE_BYTES:
            self._score_cache = {}
        try:
            for target in self.targets:
                logs.append(self._evaluate_one(metric, rung, target))
        finally:
            self._score_cache = None
        return math.exp(sum(logs) / len(logs))  # geometric mean over the settings

    def _evaluate_one(self, metric: Metric, rung: Rung, target: SparsityTarget) -> float:
        """The rung's value (log scale) for one setting."""
        if rung.kind == "err":
            value = math.log(max(self.output_error(metric, target), 1e-30))
        elif rung.kind == "seq":
            self.prune_sequentially(metric, target)
            value = self.measure(rung)  # the mean NLL
        else:
            self.apply(metric, target)
            value = self.measure(rung)  # ppl: the mean NLL is already log-perplexity
            if rung.kind == "kl":
                value = math.log(max(value, 1e-30))
        if not math.isfinite(value):
            raise InvalidMetricError(f"{'kl' if rung.kind == 'kl' else 'perplexity'} is not finite")
        return value


@dataclass
class MultiModelFitness:
    """One fitness over several models (``search --model a,b``): the geometric mean of each model's
    own fitness at the same rung, so a metric has to be good on all of them (a metric found on one
    model is only useful if it holds on the next). Every model keeps its own statistics and text."""

    parts: list[ProxyFitness]
    labels: list[str]

    def __post_init__(self) -> None:
        if len({p.fidelities for p in self.parts}) != 1:
            raise UserError("every model of a multi-model search needs the same fidelity rungs")
        self.fidelities = self.parts[0].fidelities
        self.spec = self.parts[0].spec
        self.layer_group = any(p.layer_group for p in self.parts)

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        logs = [math.log(part.evaluate(metric, fidelity)) for part in self.parts]
        return math.exp(sum(logs) / len(logs))

    def describe(self) -> dict:
        return {"models": [{"model": label, **part.describe()} for label, part in zip(self.labels, self.parts)]}
