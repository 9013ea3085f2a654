"""Do two formulas prune alike on a real model? Scores from a search run's saved statistics (its dense
X and G, stats.safetensors) and the model's weights (a safetensors file); masks at 50% (per row) and
2:4 compared linear by linear. Used for docs/METRICS.md (two-models-seed0's winner against the
recommended formula):

    .venv/bin/python bench/same_masks.py STATS.safetensors MODEL.safetensors \
        "rown(G * W * (W * (X * W)))" "rown(tanh(sqrt(W * G) * (W * sqrt(X))))"
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from prunerzero.masks import make_mask, parse_setting
from prunerzero.symbolic import TerminalSpec, evaluate, parse, prepare_terminals

if len(sys.argv) != 5:
    sys.exit("usage: same_masks.py STATS.safetensors MODEL.safetensors FORMULA FORMULA")
stats, weights, first, second = sys.argv[1:5]
torch.set_num_threads(1)
w_all = load_file(weights)
a, b = parse(first), parse(second)
spec = TerminalSpec()
diff = {"0.5": 0, "2:4": 0}
total = 0
with safe_open(stats, "pt") as f:
    names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
    for n in names:
        if n + ".weight" not in w_all:
            sys.exit(f"same_masks: {weights} has no weight for {n}")
        t = prepare_terminals(spec, w_all[n + ".weight"], f.get_tensor(n + ".x_mean_sq"), None, f.get_tensor(n + ".grad_l2"))
        sa, sb = evaluate(a, t), evaluate(b, t)
        total += sa.numel()
        for s in diff:
            diff[s] += int((make_mask(sa, parse_setting(s)) != make_mask(sb, parse_setting(s))).sum())
print(f"{len(names)} linears, {total} weights; "
      f"mask entries that differ: 50% {diff['0.5']}, 2:4 {diff['2:4']}")
