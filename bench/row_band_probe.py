"""The probe that chose ROW_BAND (docs/BENCHMARKS.md, "row-band"): model_transfer's procedure with the
'0.5:layer' setting pruned by ``masks.banded_layer_mask`` at a given half-width, and each linear's row
shares (quantiles of the fraction removed per output row) logged beside the perplexities.

    .venv/bin/python bench/row_band_probe.py --band 0.2 --model smollm2-135m --seeds 0 --only "gblm"
    .venv/bin/python bench/row_band_probe.py --band inf ...   # the free layer, for its row shares

Rows go to bench/results/row-band-probe/<s|q>-<band>.jsonl (s: SmolLM2, q: Qwen2.5-Coder; other models by
name), labelled '0.5:layer' as model_transfer writes them; the row shares to the same name + '.rows'.
The committed rows were made by this script's first draft (the same selection written out inline; its
0.1 rows equal model-transfer.jsonl's '0.5:band' rows to the last digit).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_transfer as mt  # noqa: E402

from prunerzero import masks  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "row-band-probe"
SHORT = {"smollm2-135m": "s", "qwen2.5-coder-0.5b": "q"}


def main() -> None:
    argv = sys.argv[1:]
    if "--band" not in argv or argv.index("--band") + 1 >= len(argv):
        sys.exit("row_band_probe: --band WIDTH (a float, or inf for the free layer) is required")
    i = argv.index("--band")
    band = float(argv[i + 1])
    rest = argv[:i] + argv[i + 2:]
    model = rest[rest.index("--model") + 1] if "--model" in rest else "gemma3-270m"
    OUT.mkdir(parents=True, exist_ok=True)
    rows_path = OUT / f"{SHORT.get(model, model)}-{band:g}.jsonl"
    shares_path = Path(str(rows_path) + ".rows")
    free = masks.unstructured_mask

    def probe(score: torch.Tensor, sparsity: float, group: str = "row") -> torch.Tensor:
        if group != "layer":
            return free(score, sparsity, group)
        mask = free(score, sparsity, group) if math.isinf(band) else masks.banded_layer_mask(score, sparsity, band)
        q = torch.quantile(mask.float().mean(1), torch.tensor([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0])).tolist()
        with shares_path.open("a") as f:
            f.write(json.dumps({"shape": list(score.shape), "q": [round(v, 3) for v in q]}) + "\n")
        return mask

    masks.unstructured_mask = probe  # make_mask looks it up at each call
    mt.ROWS = rows_path
    sys.argv = ["model_transfer.py", "--settings", "0.5:layer", *rest]
    mt.main()


if __name__ == "__main__":
    main()
