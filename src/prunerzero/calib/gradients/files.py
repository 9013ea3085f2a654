"""Reading gradient statistics from files: our safetensors cache files (one linear at a time), and
the ``torch.save`` dicts GBLM-Pruner and Pruner-Zero write (one norm per file, float16, x100)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open
from torch import nn

from ...errors import UserError
from ...models import find_decoder_layers, prunable_linears
from ..stats import GradientStats
from .compute import _out_in_shape

log = logging.getLogger(__name__)

FORMAT = "prunerzero-gradients"
FORMAT_VERSION = "1"
LEGACY_SCALE = 100.0  # GBLM-Pruner / Pruner-Zero multiply gradients by --scale (default 100)

_LEGACY_KEY = re.compile(r"^(?P<linear>.+)_layer_(?P<index>\d+)$")  # "self_attn.q_proj_layer_0"


class GradientFile(Mapping):
    """Our safetensors gradient file as GradientStats, read one linear at a time (``safe_open``
    maps the file; only the tensors asked for are read into memory). Names and shapes are checked
    against the model when opened; values are checked for inf/nan when read."""

    def __init__(self, path: Path, names: dict[str, str], shapes: dict[str, tuple[int, int]]) -> None:
        self.path = path
        self._names = names  # "<linear>.l1" / ".l2" -> key in the file
        self._shapes = shapes

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._shapes:
            raise KeyError(name)
        pair = []
        with safe_open(str(self.path), "pt") as f:
            for norm in ("l1", "l2"):
                t = f.get_tensor(self._names[f"{name}.{norm}"]).to(torch.float32)
                if not torch.isfinite(t).all():
                    raise UserError(f"gradient file {self.path}: {name} ({norm}) has inf/nan values")
                pair.append(t)
        return pair[0], pair[1]

    def __contains__(self, name: object) -> bool:  # without reading the tensors (Mapping's would)
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def materialize(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self[name] for name in self}


def _open_safetensors(path: Path, expected: dict[str, nn.Module]) -> tuple[GradientFile, list[str]]:
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:
        raise UserError(f"cannot read gradient file {path}: {exc}") from None
    by_norm: dict[str, dict[str, str]] = {"l1": {}, "l2": {}}
    for key in shapes:
        base, _, norm = key.rpartition(".")
        if norm in by_norm:
            by_norm[norm][base] = key
    norms = [k for k in ("l1", "l2") if by_norm[k]]
    if not norms:
        raise UserError(f"gradient file {path} holds no gradient tensors")
    if len(norms) == 1:
        log.warning("gradient file %s has only %s norms; using them for %s too", path, norms[0],
                    "l2" if norms[0] == "l1" else "l1")
    names: dict[str, str] = {}
    for name, module in expected.items():
        shape = _out_in_shape(module)
        for norm in ("l1", "l2"):
            source = norm if norm in norms else norms[0]
            key = by_norm[source].get(name)
            if key is None:
                raise UserError(f"gradient file {path}: no {source} gradients for {name}")
            if shapes[key] != shape:
                raise UserError(f"gradient file {path}: {name} has shape {shapes[key]}, the model's (out, in) "
                                f"is {shape}")
            names[f"{name}.{norm}"] = key
    return GradientFile(path, names, {name: _out_in_shape(m) for name, m in expected.items()}), norms


def read_gradient_file(path: str | Path, model: nn.Module, *, legacy_norm: str = "auto",
                       legacy_scale: float = LEGACY_SCALE) -> tuple[GradientStats, dict]:
    """Read and validate a gradient file; returns (stats, info about what the file held).

    Accepted: our safetensors (keys "<full name>.l1" / ".l2", unscaled; returned as a
    :class:`GradientFile` that reads one linear at a time), or a ``torch.save`` dict as GBLM-Pruner /
    Pruner-Zero write it: one norm per file, keys "<linear>_layer_<i>" (or full names), float16
    (out, in), multiplied by ``legacy_scale`` (their --scale, default 100), which is divided out
    here. ``legacy_norm`` "auto" reads l1 vs l2 from the file name ("..._norm_l1_...", else l2).
    A file with one norm fills both l1 and l2 with it (info["norms"]).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gradient file not found: {path}")
    expected = prunable_linears(model)
    layers_name, _ = find_decoder_layers(model)
    info: dict = {"file": str(path)}
    if path.suffix == ".safetensors":
        lazy, norms = _open_safetensors(path, expected)
        info.update(format=FORMAT, scale_removed=1.0, norms=norms)
        return lazy, info
    by_norm: dict[str, dict[str, torch.Tensor]] = {"l1": {}, "l2": {}}
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read gradient file {path} as a torch.save dict: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"gradient file {path}: expected a dict of name -> tensor")
    norm = legacy_norm
    if norm == "auto":  # GBLM-Pruner names them gradients_aggregrate_norm_l{1,2}_model_<name>.pth
        norm = "l1" if re.search(r"(?<![a-z0-9])l1(?![0-9])", path.name.lower()) else "l2"
    if norm not in by_norm:
        raise UserError(f"legacy gradient norm must be auto, l1 or l2, got {legacy_norm!r}")
    for key, tensor in raw.items():
        m = _LEGACY_KEY.match(key)
        full = f"{layers_name}.{m['index']}.{m['linear']}" if m else key
        by_norm[norm][full] = tensor.float() / legacy_scale
    info.update(format="gblm-pruner torch.save", scale_removed=legacy_scale)
    norms = [k for k in ("l1", "l2") if by_norm[k]]
    if not norms:
        raise UserError(f"gradient file {path} holds no gradient tensors")
    info["norms"] = norms
    if len(norms) == 1:  # one norm only: use it for both, and say so
        other = "l2" if norms[0] == "l1" else "l1"
        by_norm[other] = by_norm[norms[0]]
        log.warning("gradient file %s has only %s norms; using them for %s too", path, norms[0], other)

    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in expected.items():
        shape = _out_in_shape(module)
        pair = {}
        for norm in sorted(("l1", "l2"), key=lambda k: k not in norms):  # the file's own norm first
            t = by_norm[norm].get(name)
            if t is None:
                raise UserError(f"gradient file {path}: no {norm} gradients for {name}")
            if tuple(t.shape) != shape:
                raise UserError(f"gradient file {path}: {name} has shape {tuple(t.shape)}, the model's (out, in) "
                                f"is {shape}")
            if not torch.isfinite(t).all():  # e.g. GBLM-Pruner's float16 l1 sums overflow to inf
                raise UserError(f"gradient file {path}: {name} ({norm}) has inf/nan values")
            pair[norm] = t.to(torch.float32)
        stats[name] = (pair["l1"], pair["l2"])
    return stats, info


def load_gradient_file(path: str | Path, model: nn.Module, *, legacy_norm: str = "auto",
                       legacy_scale: float = LEGACY_SCALE) -> GradientStats:
    """Precomputed gradient statistics for ``model`` (see :func:`read_gradient_file`)."""
    return read_gradient_file(path, model, legacy_norm=legacy_norm, legacy_scale=legacy_scale)[0]
