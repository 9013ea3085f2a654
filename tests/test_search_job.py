"""`prunerzero search` end to end on a tiny saved model: run folder, leaderboard, resume, bad input."""
from __future__ import annotations

import json

import pytest

from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.symbolic import canonical_key, load_metric, named_metric

pytestmark = pytest.mark.usefixtures("single_thread")


def _search_args(model_dir, wikitext, out, *extra: str) -> list[str]:
    return ["--quiet", "search", "--model", str(model_dir), "--out", str(out), "--population", "6",
            "--generations", "2", "--seed", "0", "--nsamples", "4", "--seqlen", "32",
            "--fidelity-tokens", "64,128", "--report-data", str(wikitext), "--report-tokens", "128",
            "--leaderboard-top", "2", "--baselines", "magnitude,wanda,pruner-zero", *extra]


def test_search_writes_everything_and_resume_is_a_no_op(tiny_model_dir, wikitext_test, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(_search_args(tiny_model_dir, wikitext_test, out)) == 0
    printed = capsys.readouterr().out
    assert "best metric:" in printed and "| rank | metric |" in printed
    for name in ("job.json", "stats.safetensors", "evaluations.jsonl", "checkpoint.json", "hall_of_fame.json",
                 "best_metric.txt", "best_tree.json", "leaderboard.jsonl", "leaderboard.md"):
        assert (out / name).exists(), name
    load_metric(str(out / "best_tree.json"))
    board = (out / "leaderboard.md").read_text()
    for label in ("magnitude", "wanda", "pruner-zero", "dense"):
        assert f"| {label} |" in board
    # The two best hall-of-fame metrics that are not baselines, labelled by their hall-of-fame rank;
    # baselines the search ranked (seeded in generation 0) are measured once, under their own name.
    hof = json.loads((out / "hall_of_fame.json").read_text())
    baseline_keys = {canonical_key(named_metric(n).expr) for n in ("magnitude", "wanda", "pruner-zero")}
    searched = [rank for rank, row in enumerate(hof, start=1) if row["key"] not in baseline_keys][:2]
    for rank in searched:
        assert f"| searched #{rank} |" in board
    seeded = [rank for rank, row in enumerate(hof, start=1) if row["key"] in baseline_keys]
    assert all(f"#{rank} is " in board for rank in seeded)
    assert f"## {wikitext_test.parent.name}/{wikitext_test.name}, 128 tokens" in board  # not the machine's path
    rows = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 5  # dense + (2 searched + 3 baselines) x 1 setting
    evaluations = (out / "evaluations.jsonl").read_text()

    assert main(["--quiet", "search", "--resume", str(out)]) == 0  # finished: nothing is redone
    assert (out / "evaluations.jsonl").read_text() == evaluations
    assert len((out / "leaderboard.jsonl").read_text().splitlines()) == len(rows)


def test_search_bad_input(tiny_model_dir, wikitext_test, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quiet", "search", "--resume", str(tmp_path / "missing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--fidelity-tokens", "128,64")) == 2
    assert "ascending" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--fitness-data", str(wikitext_test))) == 2
    assert "reporting data" in capsys.readouterr().err
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--baselines", "wandaa")) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not out.exists()


def test_search_with_reconstruction_and_owl(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "levers"
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--settings", "0.6,2:4", "--generations", "1",
                             "--leaderboard-top", "1", "--baselines", "wanda,sparsegpt",
                             "--reconstruct", "obs", "--allocation", "owl", "--owl-m", "2")) == 0
    from safetensors import safe_open

    with safe_open(str(out / "stats.safetensors"), "pt") as f:
        assert any(k.endswith(".hessian") for k in f.keys())
    board = (out / "leaderboard.md").read_text()
    assert "OBS weight update" in board and "OWL layer-wise sparsity" in board and "sparsegpt" in board
    rows = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 3 * 2
    evaluations = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert sum(e["fitness"] is not None for e in evaluations) >= 4


def test_fast_path_reconstruction_and_owl_change_the_pruned_weights(tiny_model_dir, wikitext_test):
    """The levers reach the fitness: OBS moves surviving weights; OWL prunes layers unevenly while
    the model's overall share of pruned weights stays the target."""
    import torch

    from prunerzero.masks import parse_target
    from prunerzero.models import load_model, weight_matrix
    from prunerzero.pipeline import collect_dense_stats
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.symbolic import named_metric

    lm = load_model(str(tiny_model_dir))
    calib = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = collect_dense_stats(lm.model, calib, frozenset({"X", "H"}), progress=False)
    tokens = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(1))
    wanda = named_metric("wanda")
    pruned = {}
    for label, extra in {"plain": {}, "obs": {"reconstruct": "obs"},
                         "owl": {"allocation": "owl", "owl_m": 2.0, "owl_lambda": 0.1}}.items():
        fitness = ProxyFitness(lm.model, tokens, stats, FitnessSettings(fidelity_tokens=(64,), eval_seqlen=32, **extra))
        fitness.apply(wanda, parse_target(0.6))
        pruned[label] = {n: weight_matrix(m).detach().clone() for n, m in fitness.linears.items()}
        fitness.restore()
        if label == "obs":  # q, k, v (and gate, up) read one input: one inverse-Hessian factor for each group
            layer0 = {n.rsplit(".", 1)[-1]: f for n, f in fitness._hinv.items() if ".0." in n}
            assert layer0["q_proj"] is layer0["k_proj"] is layer0["v_proj"] and layer0["gate_proj"] is layer0["up_proj"]
            assert len({id(f) for f in layer0.values()}) == 4
    from prunerzero.methods.reconstruct import reconstruct_prune

    name = next(n for n in pruned["obs"] if n.endswith("k_proj"))  # a linear given q_proj's factor
    own = reconstruct_prune(weight_matrix(fitness.linears[name]).detach().float(), stats[name], parse_target(0.6),
                            lambda w, st: wanda.scores(w, st.x_mean_sq), "fixed")
    assert torch.equal(own, pruned["obs"][name])
    name = next(iter(pruned["plain"]))
    assert torch.equal(pruned["plain"][name] == 0, pruned["obs"][name] == 0)  # fixed mode: same mask
    assert not torch.equal(pruned["plain"][name], pruned["obs"][name])  # survivors updated
    zeros = {label: sum(int((w == 0).sum()) for w in ws.values()) for label, ws in pruned.items()}
    total = sum(w.numel() for w in pruned["plain"].values())
    assert abs(zeros["owl"] - zeros["plain"]) <= len(pruned["plain"])  # half a weight per linear, each way
    per_linear = {n: float((w == 0).float().mean()) for n, w in pruned["owl"].items()}
    assert max(per_linear.values()) - min(per_linear.values()) > 0.05 and zeros["plain"] / total == pytest.approx(0.6, abs=1e-3)


def test_fast_path_admm_gradual_moves_the_mask_and_the_leaderboard_says_so(tiny_model_dir, wikitext_test):
    """--reconstruct admm --reconstruct-mode gradual reaches the fitness: the candidate's mask is chosen
    again from the updated weights (not the plain mask), with exactly the target's share removed."""
    from types import SimpleNamespace

    import torch

    from prunerzero.masks import parse_target
    from prunerzero.models import load_model, weight_matrix
    from prunerzero.pipeline import collect_dense_stats
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.search.leaderboard import _levers
    from prunerzero.symbolic import named_metric

    lm = load_model(str(tiny_model_dir))
    calib = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = collect_dense_stats(lm.model, calib, frozenset({"X", "H"}), progress=False)
    tokens = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(1))
    pruned = {}
    for mode in ("none", "fixed", "gradual"):
        extra = {} if mode == "none" else {"reconstruct": "admm", "reconstruct_mode": mode}
        fitness = ProxyFitness(lm.model, tokens, stats, FitnessSettings(fidelity_tokens=(64,), eval_seqlen=32, **extra))
        fitness.apply(named_metric("magnitude"), parse_target(0.5))
        pruned[mode] = {n: weight_matrix(m).detach().clone() for n, m in fitness.linears.items()}
        fitness.restore()
    masks = {mode: torch.cat([(w == 0).flatten() for w in ws.values()]) for mode, ws in pruned.items()}
    assert torch.equal(masks["none"], masks["fixed"]) and not torch.equal(masks["none"], masks["gradual"])
    assert int(masks["gradual"].sum()) == int(masks["none"].sum())
    job = SimpleNamespace(reconstruct="admm", reconstruct_mode="gradual", allocation="uniform", mask_only=False)
    assert "chosen again from the updated weights" in _levers(job)
    assert "chosen again" not in _levers(SimpleNamespace(**{**vars(job), "reconstruct_mode": "fixed"}))


def test_search_evolves_owl_lambda_with_the_metric(tiny_model_dir, wikitext_test, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "genes"
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--sparsity", "0.6", "--generations", "2",
                             "--leaderboard-top", "1", "--baselines", "wanda", "--allocation", "owl",
                             "--owl-m", "2", "--owl-lambdas", "0,0.05,0.1")) == 0
    genes = json.loads((out / "best_genes.json").read_text())
    assert genes["owl_lambda"] in (0.0, 0.05, 0.1)
    board = (out / "leaderboard.md").read_text()
    assert f"searched #1 (owl_lambda {genes['owl_lambda']:g})" in board
    # Evolving lambda needs OWL; one line, nothing written.
    bad = tmp_path / "bad"
    assert main(_search_args(tiny_model_dir, wikitext_test, bad, "--owl-lambdas", "0,0.1")) == 2
    assert "--allocation owl" in capsys.readouterr().err and not bad.exists()


def test_resume_with_more_generations_equals_a_longer_run(tiny_model_dir, wikitext_test, tmp_path, monkeypatch,
                                                          capsys):
    """`search --resume DIR --generations N` extends a finished search: the same evaluations, hall of
    fame and leaderboard as a run started with N; a smaller budget than already run is refused."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    short, long = tmp_path / "short", tmp_path / "long"
    assert main(_search_args(tiny_model_dir, wikitext_test, short)) == 0  # 2 generations
    assert main(_search_args(tiny_model_dir, wikitext_test, long, "--generations", "3")) == 0
    capsys.readouterr()
    assert main(["--quiet", "search", "--resume", str(short), "--generations", "3"]) == 0
    def evaluations(run):  # without the timings
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "time")}
                for line in (run / "evaluations.jsonl").read_text().splitlines()]

    assert evaluations(short) == evaluations(long)
    for name in ("hall_of_fame.json", "best_metric.txt"):
        assert (short / name).read_text() == (long / name).read_text(), name
    assert json.loads((short / "job.json").read_text())["search"]["generations"] == 3
    board = {run: [(r["label"], r["setting"], r.get("key"), r["ppl"]) for r in
                   map(json.loads, (run / "leaderboard.jsonl").read_text().splitlines())] for run in (short, long)}
    # The extended run's leaderboard.md shows the rows of its current hall of fame only.
    assert (short / "leaderboard.md").read_text().split("\n", 3)[3] == (long / "leaderboard.md").read_text().split("\n", 3)[3]
    assert set(board[long]) <= set(board[short])
    assert main(["--quiet", "search", "--resume", str(short), "--generations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already run 3 generations" in err and len(err.splitlines()) == 1, err
    assert json.loads((short / "job.json").read_text())["search"]["generations"] == 3  # nothing written


def test_leaderboard_over_calibration_seeds_and_two_texts(tiny_model_dir, wikitext_test, tmp_path, monkeypatch):
    """Every entry is pruned once per calibration seed and measured on each reporting text; the table
    shows mean ± sd; a second search with the same settings reuses the cached baselines."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    args = ["--calib-seeds", "0,1", "--report-data", f"{wikitext_test},qasper", "--leaderboard-top", "1",
            "--baselines", "wanda,pruner-zero", "--generations", "1"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_search_args(tiny_model_dir, wikitext_test, first, *args)) == 0
    rows = [json.loads(line) for line in (first / "leaderboard.jsonl").read_text().splitlines()]
    reports = {str(wikitext_test), "qasper"}
    assert {r["report"] for r in rows} == reports
    measured = {(r["label"], r["seed"], r["report"]) for r in rows if r["label"] != "dense"}
    labels = {r["label"] for r in rows} - {"dense"}
    assert measured == {(lab, s, rep) for lab in labels for s in (0, 1) for rep in reports}
    by_seed = {s: next(r["ppl"] for r in rows if r["label"] == "pruner-zero" and r["seed"] == s
                       and r["report"] == "qasper") for s in (0, 1)}
    assert by_seed[0] != by_seed[1]  # another calibration draw (and its own G): another pruned model
    board = (first / "leaderboard.md").read_text()
    assert "mean ± sd over calibration seeds 0, 1" in board and "## qasper (test)" in board and " ± " in board
    assert main(_search_args(tiny_model_dir, wikitext_test, second, *args)) == 0
    again = [json.loads(line) for line in (second / "leaderboard.jsonl").read_text().splitlines()]
    for r in again:
        if r["label"] in ("wanda", "pruner-zero", "dense"):
            assert r["cached"], r
            assert r["ppl"] == next(x["ppl"] for x in rows if (x["label"], x["seed"], x["report"], x["setting"])
                                    == (r["label"], r["seed"], r["report"], r["setting"]))


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, smollm_tokenizer):
    """A second model family (Qwen2) with the same tokenizer, for multi-model searches."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(smollm_tokenizer), max_position_embeddings=128))
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return path


def test_search_over_two_model_families(tiny_model_dir, tiny_qwen_dir, wikitext_test, tmp_path, monkeypatch):
    """--model a,b scores each candidate on both models (geometric mean of each one's own fitness) and
    the leaderboard measures every entry on each model."""
    import math

    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    extra = ["--generations", "1", "--population", "5", "--leaderboard-top", "1", "--baselines", "wanda"]
    runs = {"both": f"{tiny_model_dir},{tiny_qwen_dir}", "llama": str(tiny_model_dir), "qwen": str(tiny_qwen_dir)}
    for name, model in runs.items():
        args = _search_args(model, wikitext_test, tmp_path / name, *extra)
        assert main(args) == 0, name
    cheap = {}
    for name in runs:
        for line in (tmp_path / name / "evaluations.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["fidelity"] == "64tok":
                cheap.setdefault(name, {})[r["key"]] = r["fitness"]
    shared = set(cheap["both"]) & set(cheap["llama"]) & set(cheap["qwen"])
    assert shared  # at least the seeded named metrics
    for key in shared:
        if cheap["both"][key] is not None:
            want = math.sqrt(cheap["llama"][key] * cheap["qwen"][key])
            assert cheap["both"][key] == pytest.approx(want, rel=1e-9), key
    assert (tmp_path / "both" / "stats-1.safetensors").exists()
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    assert [m["model"] for m in config["fitness"]["models"]] == [str(tiny_model_dir), str(tiny_qwen_dir)]
    board = (tmp_path / "both" / "leaderboard.md").read_text()
    assert board.count(f", model `{tiny_model_dir}`") == 1 and board.count(f", model `{tiny_qwen_dir}`") == 1


def test_fast_path_mask_only_scores_the_sweeps_mask_on_dense_weights(tiny_model_dir, wikitext_test):
    """--reconstruct obs --reconstruct-mode block --mask-only reaches the fitness: the candidate's mask
    is the one chosen inside the OBS sweep (the block run's zeros, not the plain mask) and every kept
    weight is the dense one; the leaderboard's text says the update is discarded."""
    from types import SimpleNamespace

    import torch

    from prunerzero.masks import parse_target
    from prunerzero.models import load_model, weight_matrix
    from prunerzero.pipeline import collect_dense_stats
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.search.leaderboard import _levers
    from prunerzero.symbolic import named_metric

    lm = load_model(str(tiny_model_dir))
    dense = {n: weight_matrix(m).detach().clone() for n, m in lm.model.named_modules() if n.endswith("_proj")}
    calib = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = collect_dense_stats(lm.model, calib, frozenset({"X", "H"}), progress=False)
    tokens = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(1))
    pruned = {}
    for label, extra in {"plain": {}, "block": {"reconstruct": "obs", "reconstruct_mode": "block", "blocksize": 16},
                         "mask": {"reconstruct": "obs", "reconstruct_mode": "block", "blocksize": 16,
                                  "mask_only": True}}.items():
        fitness = ProxyFitness(lm.model, tokens, stats, FitnessSettings(fidelity_tokens=(64,), eval_seqlen=32, **extra))
        fitness.apply(named_metric("wanda"), parse_target(0.5, "2:4"))
        pruned[label] = {n: weight_matrix(m).detach().clone() for n, m in fitness.linears.items()}
        fitness.restore()
    assert FitnessSettings(mask_only=True).to_dict()["mask_only"] is True
    assert "mask_only" not in FitnessSettings().to_dict()  # earlier runs' config.json unchanged: they resume
    assert FitnessSettings(seq_nsamples=16).to_dict()["seq_nsamples"] == 16  # (a non-default int once crashed here)
    changed = 0
    for name, w in pruned["mask"].items():
        assert torch.equal(w == 0, pruned["block"][name] == 0)
        assert torch.equal(w[w != 0], dense[name][w != 0].to(w.dtype))
        changed += not torch.equal(w == 0, pruned["plain"][name] == 0)
    assert changed > 0  # the sweep chose other weights than the dense scores would
    job = SimpleNamespace(reconstruct="obs", reconstruct_mode="block", allocation="uniform", mask_only=True)
    assert "update is discarded" in _levers(job)


def test_a_search_compared_across_the_layer(tiny_model_dir, wikitext_test, tmp_path, monkeypatch, capsys):
    """--settings 0.5:layer,0.5:band: candidates are scored with one threshold per layer (a factor constant
    per row changes the mask; band: each row within ROW_BAND of half), and the leaderboard measures every
    entry per row too, so the gap line compares the searched metric with the best hand-made metric of
    any group."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "layer"
    assert main(_search_args(tiny_model_dir, wikitext_test, out, "--settings", "0.5:layer,0.5:band", "--generations", "1",
                             "--leaderboard-top", "1", "--baselines", "wanda", "--dedup", "masks")) == 0
    # The winner was chosen by layer-wide masks: the run says how to prune with it.
    assert "(0.5:layer, 0.5:band): prune with --group layer or --group band" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    assert {(r["label"], r["setting"]) for r in rows if r["label"] == "wanda"} == {
        ("wanda", "0.5:layer"), ("wanda", "0.5:band"), ("wanda", "0.5")}
    wanda = {r["setting"]: r["ppl"] for r in rows if r["label"] == "wanda"}
    assert wanda["0.5:layer"] != wanda["0.5"]  # another mask: one threshold for the whole layer
    assert wanda["0.5:band"] not in (wanda["0.5"], wanda["0.5:layer"])  # bounded rows: a third mask
    board = (out / "leaderboard.md").read_text()
    assert "| ppl 0.5:layer | ppl 0.5:band | ppl 0.5 |" in board
    assert "0.5:layer: searched #1 (0.5" in board and "% smaller)" in board


def test_layer_settings_parse_and_their_twins():
    from prunerzero.masks import parse_setting
    from prunerzero.search.job import SearchJob

    assert parse_setting("0.5:layer").group == "layer" == parse_setting("0.5:unstructured:layer").group
    assert parse_setting("0.5").group == "row" == parse_setting("0.5:row").group
    assert parse_setting("2:4").structured
    for bad in ("2:4:layer", "0.5:layer:unstructured:x", "0.5:across"):
        with pytest.raises(UserError):
            parse_setting(bad)
    assert SearchJob(settings=("0.5:layer", "2:4")).leaderboard_settings == ("0.5:layer", "2:4", "0.5")
    assert SearchJob(settings=("0.5:layer", "0.5")).leaderboard_settings == ("0.5:layer", "0.5")
    assert SearchJob(settings=("0.5", "2:4")).leaderboard_settings == ("0.5", "2:4")
