"""The disk cache of gradient statistics: one safetensors file per (model, data, seed, ...), computed
once and read one linear at a time; resumable while it is being computed.

The key hashes everything the numbers depend on (``key_fields``), never the chunking, so chunked
and unchunked runs share a file. While computing, the folder holds ``<key>.partial.safetensors``
(the result, laid out in full up front and filled chunk by chunk), ``<key>.progress.json`` (its
finished layers) and ``<key>.chunk.safetensors`` (running sums of the chunk in progress); a later
call picks all of it up, whatever its own chunking.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...io import write_json as atomic_write_json
from ...models import cache_dir, find_decoder_layers, prunable_linears
from ..stats import GradientStats
from .compute import (Accumulators, ProgressHook, _accumulate, _check_ids, _names_of_layers, _out_in_shape, _zeros,
                      layer_chunks)
from .files import FORMAT, FORMAT_VERSION, load_gradient_file

log = logging.getLogger(__name__)


def _key_fields(model: nn.Module, calib_ids: torch.Tensor, model_id: str, data_id: str, seed: int,
                batch_size: int, dtype: torch.dtype | None) -> dict[str, str]:
    """What the cached numbers depend on. Not on chunking: chunked and unchunked runs share a file."""
    ids = calib_ids.detach().to("cpu", torch.int64).contiguous()
    shapes = [[name, *_out_in_shape(m)] for name, m in prunable_linears(model).items()]
    fields = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_id": model_id,
        "data_id": data_id,
        "nsamples": str(ids.shape[0]),
        "seqlen": str(ids.shape[1]),
        "seed": str(seed),
        "batch_size": str(batch_size),
        "dtype": "float32" if dtype is None else str(dtype).removeprefix("torch."),
        "ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
        "shapes_sha256": hashlib.sha256(json.dumps(shapes).encode()).hexdigest(),
    }
    weights = {p.dtype for m in prunable_linears(model).values() for p in m.parameters(recurse=False)}
    if weights != {torch.float32}:  # bf16 / fp16 weights give other gradients; float32 keeps the old keys
        fields["weights_dtype"] = ",".join(sorted(str(d).removeprefix("torch.") for d in weights))
    return fields


def cache_key(fields: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


class _GradientFileWriter:
    """A safetensors file laid out up front (every tensor's shape is known) and filled in place.

    The header is written first and the file extended to its full size; each finished chunk's
    tensors are then written at their offsets. So the whole result never has to sit in memory
    (550 GB of float32 l1/l2 for a 70B model), and the finished file is an ordinary safetensors
    file that ``safe_open`` reads one tensor at a time.

    Why not safetensors' own writers: ``save_file`` / ``serialize_file`` (safetensors 0.8) take
    every tensor at once, so the whole result (or a GPU chunk's running sums, copied to the CPU)
    would have to be in memory; the library has no writer that fills a file part by part. The
    layout is the format's own: an 8-byte little-endian header length, the JSON header
    (``__metadata__`` and each tensor's dtype, shape and byte range), padded to 8 bytes, then the data.
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[int, int]], metadata: dict[str, str],
                 norms: tuple[str, str] = ("l1", "l2")) -> None:
        if sys.byteorder != "little":
            raise UserError("gradient files are written little-endian, as safetensors requires")
        self.path, self.norms = path, norms
        header: dict = {"__metadata__": metadata}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in shapes.items():
            for norm in norms:
                nbytes = 4 * shape[0] * shape[1]
                header[f"{name}.{norm}"] = {"dtype": "F32", "shape": list(shape),
                                            "data_offsets": [offset, offset + nbytes]}
                self.offsets[f"{name}.{norm}"] = offset
                offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes
        self.header, self.size = struct.pack("<Q", len(raw)) + raw, offset

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:
            f.write(self.header)
            f.truncate(len(self.header) + self.size)  # sparse: untouched tensors read as zeros

    def write(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write the pairs of some linears at their places (one tensor at a time through CPU memory)
        and flush them to disk."""
        with open(self.path, "r+b") as f:
            for name, pair in stats.items():
                for norm, tensor in zip(self.norms, pair):
                    f.seek(len(self.header) + self.offsets[f"{name}.{norm}"])
                    f.write(tensor.detach().to("cpu", torch.float32).contiguous().numpy().data)
            f.flush()
            os.fsync(f.fileno())


def _checkpoint(path: Path, acc: Accumulators, metadata: dict[str, str]) -> None:
    """Running sums to ``path``, atomically, one tensor at a time through CPU memory."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer = _GradientFileWriter(tmp, {name: tuple(l1.shape) for name, (l1, _) in acc.items()}, metadata,
                                     norms=("l1", "sumsq"))
        writer.create()
        writer.write(acc)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def load_or_compute_gradients(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    model_id: str,
    data_id: str,
    seed: int,
    cache: Path | None = None,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float = 60.0,
    on_progress: ProgressHook | None = None,
    chunk_layers: int | None = None,
) -> tuple[GradientStats, dict]:
    """Gradient statistics from ``<cache>/<key>.safetensors``, computing and caching them if absent.

    ``cache`` defaults to ``cache_dir()/"gradients"``. The key hashes model_id, data_id, nsamples,
    seqlen, seed, batch_size, dtype, the calibration ids' bytes and the prunable weights' shapes and
    dtype (not their values: pass a model_id that names the weights), never ``chunk_layers``.

    While computing (``chunk_layers`` as in :func:`compute_gradient_stats`):
      ``<key>.partial.safetensors``  the result file, laid out in full; finished chunks are
                                     written into it (and leave memory)
      ``<key>.progress.json``        which decoder layers in it are final
      ``<key>.chunk.safetensors``    running sums of the chunk in progress, saved every
                                     ``checkpoint_every`` samples and/or ``checkpoint_seconds``
                                     (stretched so writing costs at most ~10% of the run)
    A later call picks all of it up, whatever its own chunking; the partial file is renamed to
    the final one when every layer is done. ``on_progress`` gets the number of (sample, chunk)
    passes done after every batch.
    Returns (stats, info): stats a :class:`GradientFile` that reads the cached file one linear at a
    time, info = {cache_file, cached, seconds, nsamples, seqlen, resumed_from, resumed_layers, chunks}.
    """
    calib_ids = _check_ids(calib_ids)
    if batch_size < 1:
        raise UserError(f"gradient batch size must be >= 1, got {batch_size}")
    t0 = time.monotonic()
    fields = _key_fields(model, calib_ids, model_id, data_id, seed, batch_size, dtype)
    folder = Path(cache) if cache is not None else cache_dir() / "gradients"
    key = cache_key(fields)
    final = folder / f"{key}.safetensors"
    partial, progress_file, chunk_file = (folder / f"{key}.{s}" for s in ("partial.safetensors", "progress.json",
                                                                          "chunk.safetensors"))
    n, seqlen = calib_ids.shape
    info = {"cache_file": str(final), "cached": False, "seconds": 0.0, "nsamples": n, "seqlen": seqlen,
            "resumed_from": 0, "resumed_layers": 0, "chunks": 0}
    if final.exists():
        stats = load_gradient_file(final, model)
        info.update(cached=True, seconds=time.monotonic() - t0)
        return stats, info

    modules = prunable_linears(model)
    _, layers = find_decoder_layers(model)
    meta = {**fields, "l1": "sum_n |dL_n/dW|", "l2": "sqrt(sum_n (dL_n/dW)^2)", "scale": "1",
            "layout": "(out, in) float32", "loss": "mean next-token cross-entropy per sample"}
    writer = _GradientFileWriter(partial, {name: _out_in_shape(m) for name, m in modules.items()}, meta)

    complete: set[int] = set()
    try:
        saved = json.loads(progress_file.read_text())
        if saved["fields"] != fields or _read_metadata(partial) != meta:
            raise ValueError("key fields differ")
        complete = {int(i) for i in saved["complete_layers"]}
    except Exception as exc:  # nothing to resume, or unreadable / foreign: start over
        if partial.exists() or progress_file.exists():
            log.warning("starting gradients afresh: %s / %s not resumable (%s)", partial.name, progress_file.name, exc)
        writer.create()
        atomic_write_json(progress_file, {"fields": fields, "complete_layers": []})

    resumed: tuple[list[int], int, Accumulators] | None = None
    if chunk_file.exists():
        try:
            with safe_open(str(chunk_file), "pt") as f:
                cmeta = f.metadata() or {}
                if any(cmeta.get(k) != v for k, v in fields.items()):
                    raise ValueError("key fields differ")
                chunk = [int(i) for i in json.loads(cmeta["layers"])]
                if complete & set(chunk):
                    raise ValueError("its layers are already complete")
                acc = _zeros(model, _names_of_layers(model, chunk), on_weight_device=chunk_layers is not None)
                for name, (l1, sumsq) in acc.items():
                    l1.copy_(f.get_tensor(f"{name}.l1"))
                    sumsq.copy_(f.get_tensor(f"{name}.sumsq"))
                resumed = (chunk, int(cmeta["done"]), acc)
            log.info("resuming gradients of layers %s from %s (%d/%d samples done)", chunk, chunk_file, resumed[1], n)
        except Exception as exc:
            log.warning("ignoring gradient checkpoint %s (%s)", chunk_file, exc)
            resumed = None
    remaining = [i for i in range(len(layers)) if i not in complete and not (resumed and i in resumed[0])]
    plan: list[tuple[list[int], int, Accumulators | None]] = [resumed] if resumed else []
    plan += [(chunk, 0, None) for chunk in layer_chunks(model, chunk_layers, remaining)]
    info.update(resumed_from=resumed[1] if resumed else 0, resumed_layers=len(complete), chunks=len(plan))

    steps = {"base": 0}
    state = {"last_done": 0, "last_time": time.monotonic(), "write_s": 0.0}
    bar = tqdm(total=n * len(plan), initial=resumed[1] if resumed else 0, desc="gradients", unit="sample",
               disable=not progress)
    try:
        for chunk, start, acc in plan:
            if acc is None:
                acc = _zeros(model, _names_of_layers(model, chunk), on_weight_device=chunk_layers is not None)
            state.update(last_done=start, last_time=time.monotonic())

            def after_batch(done: int, chunk=chunk, acc=acc) -> None:
                now = time.monotonic()
                due_count = checkpoint_every is not None and done - state["last_done"] >= checkpoint_every
                due_time = now - state["last_time"] >= max(checkpoint_seconds, 10 * state["write_s"])
                if done < n and (due_count or due_time):
                    _checkpoint(chunk_file, acc, {**fields, "done": str(done), "layers": json.dumps(chunk)})
                    state.update(last_done=done, last_time=time.monotonic(), write_s=time.monotonic() - now)
                if on_progress is not None:
                    on_progress(steps["base"] + done)

            if start < n:
                _accumulate(model, calib_ids, acc, start=start, batch_size=batch_size, dtype=dtype, bar=bar,
                            after_batch=after_batch)
            writer.write({name: (l1, sumsq.sqrt_()) for name, (l1, sumsq) in acc.items()})
            complete.update(chunk)
            atomic_write_json(progress_file, {"fields": fields, "complete_layers": sorted(complete)})
            chunk_file.unlink(missing_ok=True)
            steps["base"] += n
            del acc
    finally:
        bar.close()
    os.replace(partial, final)
    progress_file.unlink(missing_ok=True)
    info["seconds"] = time.monotonic() - t0
    return load_gradient_file(final, model), info
