"""Where modules compute and where tensors must go, for models spread by a `device_map`.

A model loaded with `device_map="auto"` (accelerate) may hold each decoder layer on another GPU,
and layers that did not fit may be *offloaded*: their weights wait on the CPU or on disk (the
parameters are `meta` tensors) and accelerate's hooks load them for each forward pass. The
layer-by-layer code paths use three helpers from here:

  module_device(m)   the device m computes on (accelerate's execution device, else its weights')
  send_to(obj, dev)  tensors inside args / kwargs moved to dev (nested tuples, lists, dicts)
  onloaded(layer)    an offloaded layer's weights loaded to its execution device for a while;
                     on exit, the weights (pruned meanwhile) are written back to the offload
                     store and freed again

Nothing here is needed for a model on one device: every helper is then a no-op.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .errors import UserError


def module_device(module: nn.Module) -> torch.device:
    """The device `module` computes on: accelerate's execution device when it has a hook,
    else the device of its first tensor that is not on `meta`, else the CPU."""
    for m in itertools.chain([module], module.modules()):
        device = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if m is module:  # the module's own tensors before any submodule's hook
            for t in itertools.chain(module.parameters(), module.buffers()):
                if t.device.type != "meta":
                    return t.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the input embedding's device."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return module_device(embeddings if embeddings is not None else model)


def send_to(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor inside it (tuples, lists, dicts) on `device`; other objects as they are.
    Tensors already there are returned as they are (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(send_to(v, device) for v in obj)
    if isinstance(obj, list):
        return [send_to(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: send_to(v, device) for k, v in obj.items()}
    return obj


def devices_of(model: nn.Module) -> dict[str, str]:
    """accelerate's device map of the model as loaded ({} for a model on one device)."""
    return dict(getattr(model, "hf_device_map", None) or {})


def _offload_hook(module: nn.Module):
    hook = getattr(module, "_hf_hook", None)
    return hook if hook is not None and getattr(hook, "offload", False) else None


def has_offloaded_weights(module: nn.Module) -> bool:
    """True when some weight of `module` waits on the CPU / disk (a `meta` parameter)."""
    return any(p.device.type == "meta" for p in module.parameters())


def _store(weights_map: Any, name: str, tensor: torch.Tensor) -> None:
    """Write `tensor` back as the offloaded value of `name` (a key of accelerate's weights map)."""
    from accelerate.utils import PrefixedDataset, offload_weight

    key, store = name, weights_map
    if isinstance(store, PrefixedDataset):
        key, store = store.prefix + name, store.dataset
    value = tensor.detach().to("cpu")
    state_dict = getattr(store, "state_dict", store if isinstance(store, dict) else None)
    if isinstance(state_dict, dict) and key in state_dict:  # offloaded to CPU memory: update in place
        state_dict[key].copy_(value)
        return
    folder, index = getattr(store, "save_folder", None), getattr(store, "index", None)
    if folder is not None and isinstance(index, dict):  # offloaded to disk: a fresh .dat file
        offload_weight(value, key, folder, index=index)
        return
    if isinstance(state_dict, dict):
        state_dict[key] = value.clone()
        return
    raise UserError(f"cannot write pruned weights back to accelerate's offload store ({type(store).__name__})")


@contextmanager
def onloaded(layer: nn.Module) -> Iterator[nn.Module]:
    """Inside: every offloaded weight of `layer` sits on its execution device and stays there
    through any number of forward passes. On exit the current values (pruned meanwhile) go back
    to the offload store (CPU memory or the offload folder) and the device copies are freed.
    A layer that is not offloaded is yielded as it is."""
    hooked = [m for m in layer.modules() if _offload_hook(m) is not None]
    if not hooked:
        if has_offloaded_weights(layer):
            raise UserError("some weights are offloaded above the decoder layer (device_map put the whole model "
                            "on cpu/disk); give the layers a device: more --max-memory, or --device-map none")
        yield layer
        return
    from accelerate.utils.modeling import named_module_tensors

    loaded: list[nn.Module] = []
    try:
        for m in hooked:
            m._hf_hook.pre_forward(m)  # loads the weights from the store to the execution device
            m._hf_hook.offload = False  # forward passes inside must not reload (and undo pruning)
            loaded.append(m)
        yield layer
        for m in hooked:
            hook = m._hf_hook
            for name, tensor in named_module_tensors(m, include_buffers=hook.offload_buffers,
                                                    recurse=hook.place_submodules, remove_non_persistent=True):
                _store(hook.weights_map, name, tensor)
    finally:
        for m in loaded:
            m._hf_hook.offload = True
            m._hf_hook.post_forward(m, None)  # back to meta: device memory freed
