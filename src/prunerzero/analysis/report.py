"""analysis.md for a search run: the numbers of ``analysis.analyze_run`` as tables and sentences.

Kept apart from the statistics so each file stays readable; nothing here computes a number.
"""
from __future__ import annotations

from typing import Any

from .stats import ALPHA, MIN_RANK_N, fmt_fit, fmt_num, fmt_p, fmt_share


def _header(result: dict[str, Any], run: dict[str, Any]) -> list[str]:
    cfg = run.get("config") or {}
    ck = run.get("checkpoint") or {}
    lines = [f"# Analysis of search run `{result['run']}`", ""]
    search = cfg.get("search") or {}
    if search:
        lines.append(f"Population {search.get('population')}, generations {search.get('generations')}, "
                     f"seed {search.get('seed')}.")
    status = "finished" if ck.get("finished") else f"last completed generation {ck.get('generation', '-')}"
    lines.append(f"Status: {status}. Fidelities (cheapest first): {', '.join(result['fidelities'])}.")
    lines.append(f"Distinct valid candidates at the cheapest fidelity: {result['candidates']}; "
                 f"distinct invalid ones: {result['invalid_keys']}.")
    if result.get("best_metric"):
        lines.append(f"Best metric: `{result['best_metric']}`.")
    return lines + [""]


def _generations(result: dict[str, Any]) -> list[str]:
    figs = result["figures"]
    lines = ["## Fitness by generation", ""]
    if "fitness" in figs:
        lines += [f"![fitness by generation]({figs['fitness'].name})", ""]
    if "shares" in figs:
        lines += [f"![invalid and duplicate share]({figs['shares'].name})", ""]
    lines += ["\"New\" counts only candidates the fitness actually scored (cache hits are not logged); the "
              "population columns come from the checkpoint's per-generation summaries.", "",
              "| gen | new evaluated | invalid (new) | best so far | pop. best | pop. median | invalid (pop.) "
              "| duplicates replaced | duplicate share |",
              "|---|---|---|---|---|---|---|---|---|"]
    for g in result["generations"]:
        lines.append(f"| {g['generation']} | {g['evaluated']} | {fmt_share(g['log_invalid_share'])} | "
                     f"{fmt_fit(g['best_so_far'])} | {fmt_fit(g['pop_best'])} | {fmt_fit(g['pop_median'])} | "
                     f"{fmt_share(g['pop_invalid_share'])} | "
                     f"{g['duplicates_replaced'] if g['duplicates_replaced'] is not None else '-'} | "
                     f"{fmt_share(g['duplicate_share'])} |")
    return lines + [""]


def _properties(result: dict[str, Any]) -> list[str]:
    word = result["word"]
    lines = ["## Metric properties vs fitness", "",
             f"One row per distinct valid candidate (canonical key), target log {word} at the cheapest fidelity "
             f"({result['fidelities'][0]}). Terminals and primitives are 0/1 (used or not), depth and size are "
             f"numbers. Negative rho: the property goes with *lower* (better) {word}.", ""]
    if "correlations" in result["figures"]:
        lines += [f"![feature correlations]({result['figures']['correlations'].name})", ""]
    corrs = result["correlations"]
    if corrs:
        lines += ["| property | n | Spearman rho | p | Kendall tau | p |", "|---|---|---|---|---|---|"]
        for c in corrs:
            mark = " *" if c.rho_p is not None and c.rho_p < ALPHA else ""
            lines.append(f"| {c.feature}{mark} | {c.n} | {fmt_num(c.rho)} | {fmt_p(c.rho_p)} | {fmt_num(c.tau)} | "
                         f"{fmt_p(c.tau_p)} |")
        lines += ["", f"\\* p < {ALPHA}. With {len(corrs)} properties tested, about {ALPHA * len(corrs):.1f} would "
                  f"pass by chance alone; Bonferroni's threshold here is p < {ALPHA / len(corrs):.2g}.", ""]
    else:
        lines += ["Too few valid candidates to correlate anything.", ""]
    if result["constant_features"]:
        lines += [f"Constant over the candidates (not tested): {', '.join(result['constant_features'])}.", ""]
    k = result["decile_size"]
    if result["deciles"]:
        lines += [f"### Use in the top vs bottom decile ({k} candidates each)", "",
                  "| terminal / primitive | top decile | bottom decile | difference |", "|---|---|---|---|"]
        for r in result["deciles"]:
            lines.append(f"| {r['feature']} | {r['top']:.0%} | {r['bottom']:.0%} | {r['diff'] * 100:+.0f} pts |")
        lines.append("")
    lines += ["### Principles this run supports", ""]
    if result["principles"]:
        lines += [f"- {p}" for p in result["principles"]]
    else:
        lines.append(f"None: no property correlates with {word} at p < {ALPHA} in this run.")
    return lines + [""]


def _fidelities(result: dict[str, Any]) -> list[str]:
    lines = ["## Rank agreement between fidelities", ""]
    agree = result["fidelity_agreement"]
    if not agree:
        lines.append("The run has one fidelity only.")
    for a in agree:
        line = (f"- {a['cheap']} vs {a['expensive']}: n={a['n']} candidates scored at both, Spearman "
                f"{fmt_num(a['rho'])} (p={fmt_p(a['rho_p'])}), Kendall {fmt_num(a['tau'])} (p={fmt_p(a['tau_p'])})")
        if a["n"] < MIN_RANK_N:
            line += f"; n < {MIN_RANK_N} is too few to judge"
        lines.append(line + ".")
    if "fidelity" in result["figures"]:
        lines += ["", f"![fidelity agreement]({result['figures']['fidelity'].name})"]
    lines += ["", "## Fast path vs full sequential pipeline", ""]
    board = result["leaderboard"]
    if board is None:
        lines.append("No leaderboard.jsonl in the run folder: nothing to compare.")
    elif not board["by_fidelity"]:
        lines.append("leaderboard.jsonl has no searched rows with a search fitness yet.")
    else:
        lines.append("Search fitness (one-shot masks from dense statistics, search split) vs the reporting "
                     "perplexity of the same metric pruned by the full sequential pipeline (geometric mean over "
                     "settings), over the leaderboard's searched rows:")
        for b in board["by_fidelity"]:
            line = (f"- {b['fidelity']}: n={b['n']}, Spearman {fmt_num(b['rho'])} (p={fmt_p(b['rho_p'])}), "
                    f"Kendall {fmt_num(b['tau'])} (p={fmt_p(b['tau_p'])})")
            if b["n"] < MIN_RANK_N:
                line += f"; n={b['n']} is too small to say whether the fast path ranks like the full pipeline"
            lines.append(line + ".")
    return lines + [""]


def render_markdown(result: dict[str, Any], run: dict[str, Any]) -> str:
    lines = _header(result, run) + _generations(result) + _properties(result) + _fidelities(result)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- several runs
def _cell(c: Any) -> str:
    """A per-run Spearman cell: rho with * when p < ALPHA, or why the run could not test it."""
    if isinstance(c, str):
        return c
    if c.rho is None:
        return "-"
    return f"{c.rho:+.2f}{'*' if c.rho_p is not None and c.rho_p < ALPHA else ''}"


def render_cross_markdown(result: dict[str, Any]) -> str:
    """cross_runs.md: the runs, how they are pooled, the pooled table, per-run correlations, principles."""
    runs, corrs = result["runs"], result["correlations"]
    lines = [f"# Metric properties vs fitness across {len(runs)} search runs", "",
             "| run | folder | fitness measured | cheapest fidelity | valid candidates | invalid | best fitness "
             "| best metric |", "|---|---|---|---|---|---|---|---|"]
    for s in runs:
        best = min(c.fitness for c in s.cands)
        metric = f"`{s.best_metric}`" if s.best_metric else "-"
        lines.append(f"| {s.label} | `{s.path}` | {s.setting} | {s.cheap} | {len(s.cands)} | {s.invalid} | "
                     f"{fmt_fit(best)} | {metric} |")
    lines += ["", "## How the runs are pooled", "",
              f"Fitness values of different runs are not on one scale, so each distinct valid candidate's fitness "
              f"at its run's cheapest fidelity is replaced by its **{result['scale']}**: (rank - 0.5) / n, ties "
              f"averaged, 0 = best, 1 = worst. Every run then contributes the same uniform spread of values, so "
              f"differences between runs cannot make a pooled correlation by themselves; only differences within "
              f"runs can. A property is pooled over the runs in which it varies. A candidate found by several runs "
              f"(same canonical key) counts once in each: {result['shared_keys']} key(s) appear in more than one "
              f"run; {result['n']} candidates in all. Terminals and primitives are 0/1 (used or not), depth and "
              f"size are numbers. Negative rho: the property goes with *better* (lower) fitness.", "",
              f"\"Runs agreeing\": runs whose own Spearman has p < {ALPHA} with the pooled sign (against: with "
              f"the opposite sign). A principle is claimed when the pooled Spearman p is below Bonferroni's "
              f"threshold ({ALPHA} / properties tested = {result['threshold']:.2g}) and no run is significant "
              f"against it. Candidates of one run descend from each other, so the p-values are optimistic; the "
              f"agreement between runs is the sturdier evidence.", ""]
    if result.get("figure") is not None:
        lines += [f"![pooled correlations]({result['figure'].name})", ""]
    # Properties no run varies say nothing; one line instead of rows of dashes (as analysis.md does).
    constant = [c.feature for c in corrs if c.runs == 0]
    corrs = [c for c in corrs if c.runs > 0]
    lines += ["| property | runs pooled | n | pooled Spearman | p | Kendall | p | runs agreeing | runs against |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in corrs:
        mark = " *" if c.rho_p is not None and c.rho_p < result["threshold"] else ""
        lines.append(f"| {c.feature}{mark} | {c.runs} of {len(runs)} | {c.n} | {fmt_num(c.rho)} | {fmt_p(c.rho_p)} | "
                     f"{fmt_num(c.tau)} | {fmt_p(c.tau_p)} | {c.same_sign} | {c.opposite_sign} |")
    lines += ["", f"\\* pooled p below the Bonferroni threshold {result['threshold']:.2g}.", ""]
    if constant:
        lines += [f"Constant in every run (not tested): {', '.join(constant)}.", ""]
    lines += ["### Spearman within each run", "",
              f"\\* p < {ALPHA} in that run; \"constant\": the same for every candidate of the run (all use it, or "
              f"none); \"not in language\": the run's function set lacks it.", "",
              "| property | " + " | ".join(s.label for s in runs) + " |", "|---|" + "---|" * len(runs)]
    for c in corrs:
        lines.append(f"| {c.feature} | " + " | ".join(_cell(c.per_run[s.label]) for s in runs) + " |")
    lines += ["", "## Principles these runs support", ""]
    if result["principles"]:
        lines += [f"- {p}" for p in result["principles"]]
    else:
        lines.append(f"None: no property correlates with the within-run fitness rank below the Bonferroni "
                     f"threshold ({result['threshold']:.2g}) without a run significantly against it.")
    return "\n".join(lines).rstrip() + "\n"
