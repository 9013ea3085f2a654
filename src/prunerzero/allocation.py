"""Layer-wise sparsity: uniform, or OWL's outlier-weighted ratios (Yin et al., ICML 2024).

OWL gives decoder layers with more activation outliers a lower sparsity. A layer's outlier
ratio D_i is the share (in %) of its Wanda scores |W|*sqrt(X) (all its linears together) above
M times their mean, measured on the dense model. The ratios are mapped linearly onto
[0, 2*lambda], centred so the model's overall sparsity stays the target:

    spread_i = (D_i - min D) / (max D - min D) * 2 * lambda
    sparsity_i = target - (spread_i - mean_w(spread))

mean_w weights each layer by its prunable weights (OWL's code takes a plain mean, the same when
every decoder layer has the same size), so sum_i numel_i * sparsity_i = target * sum_i numel_i.
Each linear then rounds its count to a whole weight, so the model's overall sparsity is exact up to
half a weight per linear. Unstructured only: N:M fixes every layer's ratio.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .calib.stats import LinearStats
from .errors import UserError
from .models import find_decoder_layers, find_linears, weight_matrix
from .placement import onloaded

ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class Allocation:
    kind: str  # "owl"
    m: float  # outlier threshold: scores above m * mean count as outliers
    lam: float  # spread: layer sparsities lie within target +- lam
    outlier_ratio: list[float]  # per decoder layer, in %
    layer_sparsity: list[float]  # per decoder layer
    layer_numel: list[int]  # prunable weights per decoder layer

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        pruned = sum(s * n for s, n in zip(self.layer_sparsity, self.layer_numel))
        d["overall_sparsity"] = pruned / sum(self.layer_numel)
        return d


def check_allocation(name: str) -> None:
    if name not in ALLOCATIONS:
        raise UserError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, not {name!r}")


def check_owl(sparsity: float, m: float, lam: float, structured: bool) -> None:
    if structured:
        raise UserError("--allocation owl needs unstructured sparsity (N:M fixes every layer's ratio)")
    if not m > 0:
        raise UserError(f"--owl-m must be > 0, got {m}")
    if not 0 <= lam or sparsity - lam < 0 or sparsity + lam >= 1:
        raise UserError(f"--owl-lambda {lam} must be >= 0 and keep every layer's sparsity in [0, 1): "
                        f"sparsity {sparsity} +- {lam}")


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """% of all entries of `scores` (any shapes, one layer's linears) above m * their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > flat.mean() * m).double().mean()) * 100.0


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float, numel: Sequence[int]) -> list[float]:
    """Per-layer sparsities from outlier ratios (%), weighted mean exactly `sparsity`."""
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(numel, dtype=torch.float64)
    span = r.max() - r.min()
    spread = (r - r.min()) / span * 2 * lam if span > 0 else torch.zeros_like(r)
    layer = sparsity - (spread - (spread * w).sum() / w.sum())
    return [float(v) for v in layer]


@torch.no_grad()
def owl_allocation(model: nn.Module, stats: dict[str, LinearStats], sparsity: float, m: float,
                   lam: float) -> Allocation:
    """OWL's per-layer sparsities from the dense model's weights and X (full linear name -> stats)."""
    layers_name, layers = find_decoder_layers(model)
    ratios, numel = [], []
    for i, layer in enumerate(layers):
        scores = []
        with onloaded(layer):  # a layer offloaded by a device map: its weights for a moment
            for name, module in find_linears(layer).items():
                weight = weight_matrix(module).float()  # (out, in)
                x = stats[f"{layers_name}.{i}.{name}"].x_mean_sq.to(weight.device)  # (in,), kept on the CPU
                scores.append(weight.abs() * x.sqrt().unsqueeze(0))  # Wanda's score, as OWL uses
        ratios.append(outlier_ratio(scores, m))
        numel.append(sum(s.numel() for s in scores))
    return Allocation("owl", m, lam, ratios, owl_sparsities(ratios, sparsity, lam, numel), numel)


def plot_allocation(alloc: Allocation, target: float, path: Path) -> None:
    """Per-layer sparsity (bars) and outlier ratio (line) against the decoder layer index."""
    from .figures import pyplot, save_figure

    plt = pyplot()
    idx = list(range(len(alloc.layer_sparsity)))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(idx, [100 * s for s in alloc.layer_sparsity], color="tab:blue", alpha=0.7, label="layer sparsity")
    ax.axhline(100 * target, color="black", lw=1, ls="--", label=f"target {100 * target:g}%")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("sparsity (%)")
    lo, hi = min(alloc.layer_sparsity), max(alloc.layer_sparsity)
    ax.set_ylim(100 * max(0.0, lo - 0.05), 100 * min(1.0, hi + 0.05))
    twin = ax.twinx()
    twin.plot(idx, alloc.outlier_ratio, color="tab:red", marker=".", label="outlier ratio")
    twin.set_ylabel(f"outliers (% of scores > {alloc.m:g} x mean)")
    ax.set_title(f"OWL allocation (M={alloc.m:g}, lambda={alloc.lam:g})")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)
