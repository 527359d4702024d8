"""benchmarks/bench_attention.py runs end to end on the reference path (tiny sizes, CPU): every
column it prints is filled, and the paired fp8 / bf16 ratio is the timing ratio it claims to be."""

import importlib.util
import json
import pathlib
import time

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" / "bench_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_attention_fp8_rows_on_reference_path(tmp_path):
    bench = _load_bench()
    out = tmp_path / "rows.json"
    with jax.default_device(jax.devices("cpu")[0]):
        rc = bench.main(["--fp8", "--no-bwd", "--no-cudnn", "--implementation", "reference",
                         "--hdims", "32", "--seqs", "128", "--causal", "0", "1", "--tokens", "256",
                         "--hidden", "64", "--paired-rounds", "3", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["hdim"], r["seq"], r["causal"]) for r in rows] == [(32, 128, 0), (32, 128, 1)]
    for r in rows:
        assert not [k for k in r if k.endswith("_error")], r
        for name in ("jf3", "fp8", "fp8lse", "fp8q"):
            assert r[f"{name}_fwd_tflops"] > 0 and r[f"{name}_fwd_ms"] > 0
        assert r["fp8_paired_rounds"] == 3
        assert 0 < r["fp8_paired_min"] <= r["fp8_paired"] <= r["fp8_paired_max"]


def test_paired_speed_ratio_measures_the_slower_function():
    bench = _load_bench()

    def sleeper(seconds):
        def fn(x):
            time.sleep(seconds)
            return x
        return fn

    x = jax.numpy.ones(())
    med, lo, hi = bench.paired_speed_ratio(sleeper(0.001), (x,), sleeper(0.004), (x,),
                                           rounds=3, calls=3)
    assert lo <= med <= hi
    # 4 ms against 1 ms per call (sleep only overshoots): every round, whichever ran first
    assert 2.0 < lo and hi < 6.0, (lo, med, hi)
