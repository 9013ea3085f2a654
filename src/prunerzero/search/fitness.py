"""Fitness of a candidate metric: perplexity of the proxy model pruned by it (lower is better).

Fast path: the activation statistics X (dense model, one pass per layer) and the gradient
statistics G are computed once per run; a candidate then costs its masks (pure tensor math over
every prunable linear, from a kept copy of the dense weights) plus a short perplexity
evaluation on the *search* split, text disjoint from the calibration windows and from the
reporting set (WikiText-2 test is never used here).

Several sparsity settings combine by the geometric mean of their perplexities (mean log-ppl),
so a metric must be good at all of them and no setting dominates by scale.
Fidelities are token budgets on the search split; each is a prefix of the next.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..calib.stats import LinearStats
from ..eval.perplexity import test_windows, window_nll
from ..masks import SparsityTarget, make_mask, parse_target
from ..models import find_decoder_layers, find_linears, weight_matrix
from ..symbolic import InvalidMetricError, Metric


def parse_setting(text: str) -> SparsityTarget:
    """'0.5' or '0.5:unstructured' or '2:4' -> a target."""
    if text.count(":") == 1 and "." not in text:  # N:M
        n, m = (int(v) for v in text.split(":"))
        return parse_target(n / m, text)
    sparsity, _, pattern = text.partition(":")
    return parse_target(float(sparsity), pattern or "unstructured")


@dataclass(frozen=True)
class FitnessSettings:
    settings: tuple[str, ...] = ("0.5",)  # sparsity settings, combined by geometric mean
    fidelity_tokens: tuple[int, ...] = (1024, 4096)  # cheapest first
    eval_seqlen: int = 512
    eval_dtype: str = "float32"  # bfloat16 = autocast forwards (~2.5x faster on AMX CPUs)


@dataclass
class ProxyFitness:
    """Implements the search engine's Fitness protocol over an in-memory model."""

    model: nn.Module
    search_tokens: torch.Tensor  # (1, N) token ids of the search split
    stats: dict[str, LinearStats]  # full linear name -> X (and G) of the dense model
    config: FitnessSettings = field(default_factory=FitnessSettings)
    data_info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers_name, layers = find_decoder_layers(self.model)
        self.linears: dict[str, nn.Module] = {
            f"{layers_name}.{i}.{name}": module for i, layer in enumerate(layers) for name, module in find_linears(layer).items()
        }
        # (out, in) float32 copies: every candidate starts from the dense weights.
        self.dense = {name: weight_matrix(m).detach().float().clone() for name, m in self.linears.items()}
        self.targets = [parse_setting(s) for s in self.config.settings]
        self.fidelities = tuple(f"{t}tok" for t in self.config.fidelity_tokens)
        self._windows = {
            f"{t}tok": test_windows(self.search_tokens, self.config.eval_seqlen, t) for t in self.config.fidelity_tokens
        }
        self.seconds = {"masks": 0.0, "eval": 0.0}

    def describe(self) -> dict:
        return {**asdict(self.config), "data": self.data_info,
                "windows": {k: int(v.shape[0]) for k, v in self._windows.items()}}

    @torch.no_grad()
    def apply(self, metric: Metric, target: SparsityTarget) -> None:
        """Write the candidate's pruned weights into the model (raises InvalidMetricError)."""
        start = time.perf_counter()
        for name, module in self.linears.items():
            weight = self.dense[name]  # (out, in)
            stats = self.stats[name]
            scores = metric.scores(weight, stats.x_mean_sq, stats.grad_l1, stats.grad_l2)  # (out, in)
            mask = make_mask(scores, target)
            weight_matrix(module).copy_(weight.masked_fill(mask, 0.0))
        self.seconds["masks"] += time.perf_counter() - start

    @torch.no_grad()
    def restore(self) -> None:
        for name, module in self.linears.items():
            weight_matrix(module).copy_(self.dense[name])

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        windows = self._windows[fidelity]
        log_ppls = []
        device_type = next(self.model.parameters()).device.type
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if self.config.eval_dtype == "bfloat16" else nullcontext()
        for target in self.targets:
            self.apply(metric, target)
            start = time.perf_counter()
            with autocast:
                nll = float(window_nll(self.model, windows).mean())
            self.seconds["eval"] += time.perf_counter() - start
            if not math.isfinite(nll):
                raise InvalidMetricError("perplexity is not finite")
            log_ppls.append(nll)
        return math.exp(sum(log_ppls) / len(log_ppls))
