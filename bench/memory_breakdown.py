"""Where `prunerzero prune` spends its memory: resident memory (RSS) per phase of one run.

Runs the same code as `prunerzero prune` (api.prune) in this process with a sampler thread that
reads the process's RSS every 5 ms; the library's phase functions are wrapped to mark where the
run is, and the report gives, per phase, the RSS when it starts and the peak inside it. Memory
does not depend on how busy the machine is, so this can run beside other jobs.

    .venv/bin/python bench/memory_breakdown.py --method wanda            # one row set per method
    .venv/bin/python bench/memory_breakdown.py --method sparsegpt --write
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, replace_section  # noqa: E402

OUT = ROOT / "runs" / "memory-breakdown"


class Sampler:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.phase = "start"
        self.start_rss: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.order: list[str] = []
        self._stop = False
        self.enter("start")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _rss(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop:
            rss = self._rss()
            self.peak[self.phase] = max(self.peak.get(self.phase, 0.0), rss)
            time.sleep(0.005)

    def enter(self, phase: str) -> None:
        rss = self._rss()
        if phase not in self.start_rss:
            self.order.append(phase)
            self.start_rss[phase] = rss
        self.phase = phase
        self.peak[phase] = max(self.peak.get(phase, 0.0), rss)

    def stop(self) -> None:
        self._stop = True
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--calib-dtype", default="float32")
    ap.add_argument("--write", action="store_true", help="write the memory section from every saved breakdown")
    args = ap.parse_args()
    if args.write:
        write()
        return
    sampler = Sampler()
    import torch  # noqa: F401  (the import's own memory is a phase of its own)

    from prunerzero import api, pipeline
    from prunerzero.calib import capture

    sampler.enter("import torch + transformers")

    def phase(name: str, fn):
        def wrapped(*a, **k):
            sampler.enter(name)
            try:
                return fn(*a, **k)
            finally:
                sampler.enter(f"between phases (after {name})")
        return wrapped

    config_class = api.PruneConfig
    config_class.open_model = phase("load model", config_class.open_model)
    config_class.test_tokens = phase("tokenize texts", config_class.test_tokens)
    config_class.calibration_tokens = phase("tokenize texts", config_class.calibration_tokens)
    config_class.dense_gradients = phase("gradients", config_class.dense_gradients)
    api.dense_perplexity = phase("dense perplexity", api.dense_perplexity)
    capture_fn = capture.capture_layer_inputs
    def capture_then_layers(*a, **k):
        sampler.enter("capture first-layer inputs")
        try:
            return capture_fn(*a, **k)
        finally:
            sampler.enter("prune layers")

    pipeline.capture_layer_inputs = capture_then_layers
    original_prune = api.prune_model

    def prune_model(*a, **k):
        sampler.enter("prune layers")
        try:
            return original_prune(*a, **k)
        finally:
            sampler.enter("between phases (after prune layers)")

    api.prune_model = prune_model
    api.perplexity = phase("pruned perplexity", api.perplexity)
    cfg = api.PruneConfig(model="smollm2-135m", method=args.method, pattern=args.pattern, nsamples=32, seqlen=512,
                          eval_data=str(WIKI.resolve()), eval_tokens=8192, calib_dtype=args.calib_dtype,
                          skip_dense=False)
    start = time.perf_counter()
    results = api.prune(cfg, progress=False)
    sampler.enter("end")
    sampler.stop()
    rows = [{"phase": p, "start_mib": sampler.start_rss[p], "peak_mib": sampler.peak.get(p, sampler.start_rss[p])}
            for p in sampler.order]
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"method": args.method, "pattern": args.pattern, "calib_dtype": args.calib_dtype, "rows": rows,
              "peak_rss_mib": results["peak_rss_mib"], "ppl": results["pruned"]["ppl"],
              "seconds": time.perf_counter() - start}
    (OUT / f"{args.method}-{args.pattern.replace(':', '_')}-{args.calib_dtype}.json").write_text(json.dumps(record, indent=1))
    for r in rows:
        print(f"{r['phase']:45s} start {r['start_mib']:7.0f} MiB  peak {r['peak_mib']:7.0f} MiB")
    print("peak RSS", results["peak_rss_mib"], "ppl", results["pruned"]["ppl"])


def write() -> None:
    lines = ["## Memory of `prunerzero prune`, phase by phase", "",
             "SmolLM2-135M (float32 weights: 540 MB), 32x512 calibration, 8192 WikiText-2 tokens, resident memory "
             "(RSS) of the process sampled every 5 ms: the RSS when each phase starts and its peak inside the phase.",
             ""]
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        lines += [f"**{r['method']} {r['pattern']}, calibration {r['calib_dtype']}**: peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"perplexity {r['ppl']:.2f}", "", "| phase | RSS at start MiB | peak in phase MiB |", "|---|---|---|"]
        lines += [f"| {x['phase']} | {x['start_mib']:.0f} | {x['peak_mib']:.0f} |" for x in r["rows"]]
        lines.append("")
    lines.append("Command: `.venv/bin/python bench/memory_breakdown.py --method M` per row set, then `--write`.")
    replace_section("memory", "\n".join(lines))


if __name__ == "__main__":
    main()
