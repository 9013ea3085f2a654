"""bf16 autocast on CPUs without bf16 hardware: matrix products in float32 on the same bf16 values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunerzero import precision
from prunerzero.precision import Bf16ProductsInFloat32, bf16_autocast

pytestmark = pytest.mark.usefixtures("single_thread")


def _rounded(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 16, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(40, generator=g)


def test_products_are_float32_products_of_the_bf16_values_rounded_to_bf16():
    x, w, b = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16), Bf16ProductsInFloat32():
        got = {"linear": F.linear(x, w, b), "no bias": F.linear(x, w), "matmul": x @ w.t(),
               "bmm": torch.bmm(x, x.transpose(1, 2))}
    want = {"linear": F.linear(_rounded(x), _rounded(w), _rounded(b)), "no bias": F.linear(_rounded(x), _rounded(w)),
            "matmul": _rounded(x) @ _rounded(w).t(), "bmm": torch.bmm(_rounded(x), _rounded(x).transpose(1, 2))}
    for name, out in got.items():
        assert out.dtype == torch.bfloat16, name
        torch.testing.assert_close(out.float(), want[name].bfloat16().float(), rtol=0, atol=0, msg=name)


def test_it_agrees_with_torchs_own_bf16_kernels_and_keeps_autocasts_dtypes():
    x, w, b = _data(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.log_softmax(F.linear(x, w, b), -1), F.linear(x, w, b)
        with Bf16ProductsInFloat32():
            emulated = F.log_softmax(F.linear(x, w, b), -1), F.linear(x, w, b)
    for a, e in zip(native, emulated):
        assert a.dtype == e.dtype
        torch.testing.assert_close(e.float(), a.float(), rtol=1e-2, atol=1e-2)  # bf16: 8 bits of mantissa


def test_gradients_flow_through_it():
    x, w, _ = _data(2)
    grads = []
    for emulate in (False, True):
        weight = w.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if emulate:
                with Bf16ProductsInFloat32():
                    F.linear(x, weight).float().square().sum().backward()
            else:
                F.linear(x, weight).float().square().sum().backward()
        grads.append(weight.grad)
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_autocast_uses_the_float32_products_only_where_bf16_is_slow(monkeypatch, fast):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    x, w, _ = _data(3)
    ctx = bf16_autocast("cpu")
    for _ in range(2):  # one object, several with-blocks (as a run uses it)
        with ctx:
            assert torch.is_autocast_enabled("cpu")
            out = F.linear(x, w)
            assert out.dtype == torch.bfloat16
        assert not torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.linear(x, w)
    assert torch.equal(out, native) or not fast  # fast CPUs: torch's own kernels, untouched
    if not fast:
        assert torch.equal(out, F.linear(_rounded(x), _rounded(w)).bfloat16())
    with bf16_autocast("cpu", enabled=False):
        assert F.linear(x, w).dtype == torch.float32


def test_bf16_fitness_and_calibration_run_with_the_float32_products(tiny_model_dir, wikitext_test, tmp_path,
                                                                     monkeypatch):
    """The search's bf16 fitness forwards and `prune --calib-dtype bfloat16` on a CPU without bf16
    hardware: the same numbers as torch's own bf16 kernels, up to bf16 rounding."""
    import json

    from prunerzero.cli import main
    from prunerzero.models import load_model
    from prunerzero.pipeline import collect_dense_stats
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.symbolic import named_metric

    lm = load_model(str(tiny_model_dir))
    calib = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    stats = collect_dense_stats(lm.model, calib, frozenset({"X"}), progress=False)
    tokens = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(1))
    values, ppl = {}, {}
    for fast in (True, False):
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda fast=fast: fast)
        fitness = ProxyFitness(lm.model, tokens, stats,
                               FitnessSettings(fidelity_tokens=(64,), eval_seqlen=32, eval_dtype="bfloat16"))
        values[fast] = fitness.evaluate(named_metric("wanda"), fitness.fidelities[0])
        fitness.restore()
        out = tmp_path / f"fast-{fast}"
        assert main(["--quiet", "prune", "--model", str(tiny_model_dir), "--nsamples", "4", "--seqlen", "32",
                     "--eval-data", str(wikitext_test), "--eval-tokens", "128", "--method", "wanda",
                     "--calib-dtype", "bfloat16", "--save", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["calibration"]["dtype"] == "bfloat16"
        ppl[fast] = results["pruned"]["ppl"]
    assert values[False] == pytest.approx(values[True], rel=1e-2)
    assert ppl[False] == pytest.approx(ppl[True], rel=1e-2)
