"""analysis.md for a search run: the numbers of ``analysis.analyze_run`` as tables and sentences.

Kept apart from the statistics so each file stays readable; nothing here computes a number.
"""
from __future__ import annotations

from typing import Any

from .analysis import ALPHA, MIN_RANK_N, _fit, _num, _p, _share


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
        lines.append(f"| {g['generation']} | {g['evaluated']} | {_share(g['log_invalid_share'])} | "
                     f"{_fit(g['best_so_far'])} | {_fit(g['pop_best'])} | {_fit(g['pop_median'])} | "
                     f"{_share(g['pop_invalid_share'])} | {g['duplicates_replaced'] if g['duplicates_replaced'] is not None else '-'} | "
                     f"{_share(g['duplicate_share'])} |")
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
            lines.append(f"| {c.feature}{mark} | {c.n} | {_num(c.rho)} | {_p(c.rho_p)} | {_num(c.tau)} | {_p(c.tau_p)} |")
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
                f"{_num(a['rho'])} (p={_p(a['rho_p'])}), Kendall {_num(a['tau'])} (p={_p(a['tau_p'])})")
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
            line = (f"- {b['fidelity']}: n={b['n']}, Spearman {_num(b['rho'])} (p={_p(b['rho_p'])}), "
                    f"Kendall {_num(b['tau'])} (p={_p(b['tau_p'])})")
            if b["n"] < MIN_RANK_N:
                line += f"; n={b['n']} is too small to say whether the fast path ranks like the full pipeline"
            lines.append(line + ".")
    return lines + [""]


def render_markdown(result: dict[str, Any], run: dict[str, Any]) -> str:
    lines = _header(result, run) + _generations(result) + _properties(result) + _fidelities(result)
    return "\n".join(lines).rstrip() + "\n"
