"""Sequential layer-by-layer pruning: the one calibration loop every method and the search use.

Decoder layers are pruned one at a time and each layer's *pruned* outputs feed the next (as
Wanda and SparseGPT do). Inside a layer, linears are pruned either as their inputs arrive (one
forward per layer, "sequential") or all from the dense layer's statistics followed by a second
forward ("parallel", the reference code's order). Methods that need no activation statistics
skip the forward passes. `collect_dense_stats` is the search's fast path: dense statistics once.

Devices: each layer computes where its weights are (a `device_map` may spread layers over GPUs;
see placement.py), its statistics accumulate in float32 on that device, the pruning math runs in
float32 there, and the result is written back in the model's own dtype. Layers offloaded to the
CPU or disk are loaded for their turn and written back pruned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .calib.capture import capture_layer_inputs, layer_tasks, run_layer
from .calib.gated_mlp import chunked_gated_mlps
from .calib.lockstep import BatchesDiverged, Lockstep
from .calib.stats import GradientStats, LinearStats, StatsCollector, collect_input_stats
from .errors import UserError
from .masks import SparsityTarget
from .methods.base import Method
from .models import find_decoder_layers, find_linears, is_prunable, set_weight_matrix, weight_matrix
from .placement import input_device, onloaded
from .symbolic.primitives import InvalidMetricError

TargetFor = Callable[[int], SparsityTarget]  # decoder-layer index -> its target


@dataclass
class PruneReport:
    layers: list[dict] = field(default_factory=list)  # per linear: name, shape, pruned, sparsity
    seconds: dict[str, float] = field(default_factory=dict)
    within_layer: str = ""  # how linears inside a layer were ordered: sequential / parallel / none

    @property
    def sparsity(self) -> float:
        pruned = sum(row["pruned"] for row in self.layers)
        total = sum(row["numel"] for row in self.layers)
        return pruned / max(total, 1)


def _attach_grads(stats: LinearStats, grads: GradientStats | None, full_name: str) -> LinearStats:
    if grads is not None and full_name in grads:
        stats.grad_l1, stats.grad_l2 = grads[full_name]
    return stats


def _prune_one(method, module, name, stats, target, prefix, report) -> None:
    full_name = f"{prefix}.{name}" if prefix else name
    weight = weight_matrix(module)  # (out, in) view in the module's storage
    with torch.autocast(weight.device.type, enabled=False):  # the pruning math stays in float32
        try:
            new = method.prune(weight.float(), stats, target)
        except InvalidMetricError as exc:  # say which linear: the reason may hold there only (inf, ties)
            raise InvalidMetricError(f"{exc.reason} (in {full_name})") from None
    set_weight_matrix(module, new)  # back in the module's dtype (bf16 / fp16 weights stay so)
    pruned = int((weight_matrix(module) == 0).sum())  # zeros now in the layer, as a user would count them
    report.layers.append(
        {"name": full_name, "shape": list(weight.shape), "numel": weight.numel(), "pruned": pruned,
         "sparsity": pruned / weight.numel()}
    )


def _layer_two_pass(layer, linears, method, target, hidden, calls, grads, prefix, report, last: bool):
    """Reference order (Wanda/SparseGPT code): all statistics from the dense layer, prune every
    linear, then a second pass for the pruned outputs. Works with any number of batches."""
    with collect_input_stats(linears, method.needs) as collector:
        run_layer(layer, hidden, calls)
    for name, module in linears.items():
        stats = _attach_grads(collector.stats(name), grads, f"{prefix}.{name}")
        _prune_one(method, module, name, stats, target, prefix, report)
    del collector
    return hidden if last else run_layer(layer, hidden, calls)


def _layer_one_pass(layer, linears, method, target, hidden, calls, grads, prefix, report, last: bool):
    """One forward pass: each linear is pruned the moment its input from every calibration batch
    has arrived, so later linears in the layer see the outputs of already-pruned ones (SparseGPT's
    "true sequential"), and the pass's output is already the pruned output. The batches run in
    lockstep (calib/lockstep.py), each pausing at every linear; gated MLPs run in token chunks so
    their (tokens, intermediate) activations are not all alive at once."""
    collector = StatsCollector(method.needs)
    lockstep: Lockstep[torch.Tensor] = Lockstep()
    done: set[str] = set()

    def first_sight(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if name in done:
            return
        collector.observe(name, x, batch=lockstep.batch)
        lockstep.pause(name)  # back here once every batch has added its input and the linear is pruned

    def prune(name: str) -> None:
        stats = _attach_grads(collector.stats(name), grads, f"{prefix}.{name}")
        _prune_one(method, linears[name], name, stats, target, prefix, report)
        done.add(name)

    def pre_hook(name: str):
        return lambda module, args: first_sight(name, module, args[0])

    tasks = layer_tasks(layer, hidden, calls)
    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in linears.items()]
    try:
        with chunked_gated_mlps(layer, set(linears), first_sight):
            hidden = lockstep.run(tasks, prune)
    except BatchesDiverged as exc:
        raise UserError(f"{prefix}: {exc}: the layer routes tokens by their content; prune with "
                        "--within-layer parallel") from None
    finally:
        for h in handles:
            h.remove()
    for name in linears.keys() - done:
        raise RuntimeError(f"{prefix}.{name} was never called during the layer's forward pass")
    return hidden


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: Method,
    target: SparsityTarget | TargetFor,
    calib_ids: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    grads: GradientStats | None = None,
    within_layer: str = "auto",
    one_pass_max_tokens: int = 65536,
    progress: bool = True,
) -> PruneReport:
    """Prune `model` in place. calib_ids (nsamples, seqlen) is needed when the method uses X or H.

    within_layer: "sequential" (one forward per layer, linears pruned in call order, the batches
    of `batch_size` samples in lockstep), "parallel" (the reference order, two forwards per layer),
    or "auto": sequential when the calibration set has at most `one_pass_max_tokens` tokens (in
    one pass every batch's layer activations are alive at once; in two, one batch's).
    """
    target_for: TargetFor = target if callable(target) else (lambda _i, t=target: t)
    model.eval()  # dropout off: statistics must not depend on random masks
    layers_name, layers = find_decoder_layers(model)
    report = PruneReport()
    if "G" in method.needs and grads is None:
        raise ValueError(f"method {method.name} needs gradient statistics (G)")
    start = time.perf_counter()

    if not method.needs & {"X", "H"}:  # nothing to observe: no forward passes at all
        for i, layer in enumerate(tqdm(layers, desc=method.name, disable=not progress)):
            prefix = f"{layers_name}.{i}"
            with onloaded(layer):
                for name, module in find_linears(layer).items():
                    stats = _attach_grads(LinearStats(), grads, f"{prefix}.{name}")
                    _prune_one(method, module, name, stats, target_for(i), prefix, report)
        report.seconds["prune"] = time.perf_counter() - start
        report.within_layer = "none"
        return report

    if calib_ids is None:
        raise ValueError(f"method {method.name} needs calibration data")
    if within_layer == "auto":
        within_layer = "sequential" if calib_ids.numel() <= one_pass_max_tokens else "parallel"
    if within_layer not in ("sequential", "parallel"):
        raise ValueError(f"within_layer must be auto, sequential or parallel, not {within_layer!r}")
    report.within_layer = within_layer
    one_pass = within_layer == "sequential"
    captured = capture_layer_inputs(model, layers, calib_ids, batch_size)
    report.seconds["capture"] = time.perf_counter() - start
    hidden = captured.hidden
    prune_layer = _layer_one_pass if one_pass else _layer_two_pass
    for i, layer in enumerate(tqdm(layers, desc=f"{method.name} layers", disable=not progress)):
        with onloaded(layer):
            hidden = prune_layer(
                layer, find_linears(layer), method, target_for(i), hidden, captured.calls[i], grads,
                f"{layers_name}.{i}", report, last=i == len(layers) - 1,
            )
    report.seconds["prune"] = time.perf_counter() - start
    return report


class _HeadInputSeen(Exception):
    """Raised by the output head's pre-hook: its input is recorded, the logits are not needed."""


@torch.no_grad()
def prune_output_head(
    model: nn.Module, method: Method, target: SparsityTarget, calib_ids: torch.Tensor | None, report: PruneReport,
    *, batch_size: int = 8,
) -> dict:
    """Prune the output head (lm_head) too, after the decoder layers, only when asked.

    Its input statistics come from forwards of the already pruned model, stopped at the head's
    input (a pre-hook records the tensor and aborts, so no vocabulary-sized logits are computed).
    With tied embeddings the head *is* the input embedding matrix: both are pruned, and the
    returned record says so. Gradient-based methods are refused: G covers decoder linears only.
    """
    head = model.get_output_embeddings()
    if head is None or not is_prunable(head):
        raise UserError(f"{type(model).__name__} has no prunable output head")
    if "G" in method.needs:
        raise UserError(f"{method.name} needs gradients, which are computed for decoder layers only: "
                        "prune the output head with a method that uses W and X")
    name = next(n for n, m in model.named_modules() if m is head)
    stats = LinearStats()
    if method.needs & {"X", "H"}:
        if calib_ids is None:
            raise ValueError(f"method {method.name} needs calibration data")

        collector = StatsCollector(method.needs)

        def record_and_stop(_module: nn.Module, args: tuple) -> None:
            collector.observe(name, args[0])  # (batch, seq, hidden)
            raise _HeadInputSeen

        handle = head.register_forward_pre_hook(record_and_stop)
        try:
            for batch in calib_ids.split(batch_size):
                try:
                    model(batch.to(input_device(model)), use_cache=False)
                except _HeadInputSeen:
                    pass
        finally:
            handle.remove()
        stats = collector.stats(name)
    start = time.perf_counter()
    with onloaded(head):
        _prune_one(method, head, name, stats, target, "", report)
    report.seconds["head"] = time.perf_counter() - start
    embeddings = model.get_input_embeddings()
    tied = embeddings is not None and embeddings.weight is head.weight
    return {"name": name, "tied_to_input_embeddings": tied}


@torch.no_grad()
def collect_dense_stats(
    model: nn.Module, calib_ids: torch.Tensor, needs: frozenset[str], *, batch_size: int = 8, progress: bool = True
) -> dict[str, LinearStats]:
    """Statistics of every prunable linear of the *dense* model, one forward pass per layer.

    The search's fast path: computed once per run, reused by every candidate metric.
    Keys are full linear names (as in GradientStats). The statistics are accumulated on each
    layer's device and kept on the CPU, so a model filling its GPUs does not also hold them there.
    """
    model.eval()
    layers_name, layers = find_decoder_layers(model)
    captured = capture_layer_inputs(model, layers, calib_ids, batch_size)
    hidden = captured.hidden
    out: dict[str, LinearStats] = {}
    for i, layer in enumerate(tqdm(layers, desc="statistics", disable=not progress)):
        linears = find_linears(layer)
        with onloaded(layer), collect_input_stats(linears, needs) as collector:
            hidden = run_layer(layer, hidden, captured.calls[i])
        for name in linears:
            out[f"{layers_name}.{i}.{name}"] = collector.stats(name).to("cpu")
    return out
