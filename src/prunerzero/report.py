"""Human-readable summaries of results records."""
from __future__ import annotations

from typing import Any


def _ppl(record: dict | None) -> str:
    return "-" if not record else f"{record['ppl']:.2f}"


def print_prune_summary(results: dict[str, Any]) -> None:
    details = results.get("method_details", {})
    what = details.get("formula") or results["method"]
    print(f"method     {results['method']}  ({what})")
    print(f"pattern    {results['pattern']}  target {results['target_sparsity']:.4f}  actual {results['actual_sparsity']:.4f}")
    if "allocation" in results:
        a = results["allocation"]
        print(f"allocation {a['kind']} (M {a['m']:g}, lambda {a['lambda']:g}): layer sparsity "
              f"{min(a['layer_sparsity']):.4f}..{max(a['layer_sparsity']):.4f}")
    if "head" in results:
        tied = "  (tied: the input embeddings are the same matrix)" if results["head"]["tied_to_input_embeddings"] else ""
        print(f"head       {results['head']['name']} pruned{tied}")
    if "pruned" in results:
        ev = results["eval"]
        name = ev.get("source") if ev.get("source") != "file" else ev.get("path")
        print(f"perplexity dense {_ppl(results.get('dense'))}  pruned {_ppl(results['pruned'])}"
              f"  ({name}, {ev['tokens']} tokens, seqlen {ev['seqlen']})")
    secs = results["seconds"]
    print("seconds    " + "  ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    if "zero_shot" in results:
        from .eval.zeroshot import format_zeroshot_table

        print(format_zeroshot_table(results["zero_shot"]))
    if results["config"].get("save"):
        print(f"saved      {results['config']['save']}/results.json" + ("  + model/" if results.get("saved_model") else ""))
