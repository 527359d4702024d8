"""The CUDA kernels (``implementation="cuda"``) on a Hopper GPU vs the float64 oracle.

Skipped (with the reason) wherever jax_flash3's CUDA library or an sm_90 GPU is missing; see
conftest.py. Forward and backward are separate tests so that each kernel is judged on its own.

Rules (DESIGN.md "Numerics contract", STYLE.md "Tests and benchmarks"):
- Oracle: numpy float64 on the host, on the very bf16/fp16 inputs the kernel saw.
- FA3 rule: max |kernel - oracle| <= 2 * max |plain same-dtype attention - oracle| + noise, where
  the plain attention is ``naive_attention`` run in bf16/fp16 under XLA (and ``jax.vjp`` of it for
  gradients). Noise: 1e-5 of the output scale forward; 1e-4 of each gradient's scale backward
  (plus 3e-4 with softcap, which kernels may evaluate with the hardware tanh approximation). lse
  is float32 and must be fp32-accurate (1e-4 relative, plus 1e-3 * softcap).
- Every element finite (NaN never passes), fully masked rows give out 0, lse -inf, dq 0.
- Poison first: XLA owns the output buffers, so they cannot be pre-filled. Each check compiles
  the call, runs it once on other random inputs and frees the results, then allocates NaN-filled
  arrays of exactly the outputs' shapes and dtypes and frees them, and only then runs on the test
  inputs. The allocator tends to hand those freed blocks to the next outputs, so an element the
  kernel never writes shows up as NaN (caught by the finiteness check) or as a stale decoy value
  (caught by the oracle comparison). Best effort, not a guarantee: it depends on XLA's allocator.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracle import (
    Case,
    assert_tight,
    check_backward,
    check_forward,
    make_inputs,
    oracle,
    seed_of,
)

import jax_flash3
from jax_flash3 import UnsupportedError, flash_attention, make_config

pytestmark = pytest.mark.gpu

CUDA = "cuda"
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16}


def _grid(cases: dict[str, tuple[Case, str]]):
    """``pytest.param(case, dtype_name, id=name)`` for each named case (names carry the dtype)."""
    return [pytest.param(case, dtype, id=name) for name, (case, dtype) in cases.items()]


def _named(cases: dict[str, tuple[Case, str]]) -> dict[str, tuple[Case, str]]:
    return {f"{name}-{dtype}": (case, dtype) for name, (case, dtype) in cases.items()}


# --------------------------------------------------------------------------------------------
# The grids (module-level so they can be listed and counted)

HEAD_DIMS = [64, 80, 96, 128, 192, 256]

HEAD_DIM_CASES = {
    f"d{d}-{'causal' if causal else 'full'}-{dtype}": (
        Case(b=2, sq=113, sk=1000, hq=4, hk=2, d=d, causal=causal),
        dtype,
    )
    for d in HEAD_DIMS
    for causal in (False, True)
    for dtype in DTYPES
}

SEQLEN_PAIRS = [
    (1, 1),
    (1, 17),
    (17, 1),
    (17, 113),
    (113, 17),
    (113, 113),
    (1, 4097),
    (17, 4097),
    (113, 1000),
    (1000, 113),
    (1000, 1000),
    (4097, 4097),
    (4097, 113),
]
SEQLEN_CASES = {
    f"sq{sq}-sk{sk}-{'causal' if causal else 'full'}": (
        Case(b=1, sq=sq, sk=sk, hq=2, hk=1, d=128, causal=causal),
        "bf16",
    )
    for sq, sk in SEQLEN_PAIRS
    for causal in (False, True)
}

GQA_CASES = {
    f"hq{ratio * hk}-hk{hk}-{'causal' if causal else 'full'}": (
        Case(b=1, sq=1000, sk=1000, hq=ratio * hk, hk=hk, d=128, causal=causal),
        dtype,
    )
    for ratio, hk, causal, dtype in [
        (1, 2, False, "bf16"),
        (1, 2, True, "fp16"),
        (4, 2, False, "fp16"),
        (4, 2, True, "bf16"),
        (8, 2, False, "bf16"),
        (8, 2, True, "fp16"),
        (8, 1, True, "bf16"),  # (8, 1): MQA
    ]
}

WINDOWS = {
    "window_3_0": (False, (3, 0)),
    "window_0_5": (False, (0, 5)),
    "window_16_none": (False, (16, None)),
    "window_none_16": (False, (None, 16)),
    "window_0_0": (False, (0, 0)),
    "window_128_128": (False, (128, 128)),
    "causal_window_64": (True, (64, None)),
    # int32-max windows mean unbounded (no index overflow in the kernels)
    "window_huge_huge": (False, (2**31 - 1, 2**31 - 1)),
    "causal_window_huge": (True, (2**31 - 1, None)),
}
MASK_CASES = {
    f"{mask}-sq{sq}-sk{sk}": (
        Case(b=1, sq=sq, sk=sk, hq=4, hk=2, d=64, causal=WINDOWS[mask][0], window=WINDOWS[mask][1]),
        "bf16" if i % 2 == 0 else "fp16",
    )
    for i, mask in enumerate(WINDOWS)
    for sq, sk in [(113, 1000), (1000, 113)]
    + ([(1000, 1000)] if mask in ("window_128_128", "causal_window_64") else [])
}

SOFTCAP_CASES = {
    f"softcap{cap:g}-{mask}": (
        Case(
            b=1,
            sq=1000,
            sk=1000,
            hq=2,
            hk=1,
            d=128,
            causal=causal,
            window=window,
            softcap=cap,
            q_scale=3.0,
        ),
        dtype,
    )
    for cap, dtype in [(5.0, "bf16"), (50.0, "fp16")]
    for mask, (causal, window) in [
        ("full", (False, None)),
        ("causal", (True, None)),
        ("window_64_0", (False, (64, 0))),
    ]
}

DEAD_ROW_CASES = {
    "causal-sq4097-sk113": (Case(b=1, sq=4097, sk=113, hq=2, hk=1, d=128, causal=True), "bf16"),
    "window_0_5-sq1000-sk113": (
        Case(b=2, sq=1000, sk=113, hq=8, hk=1, d=64, window=(0, 5), softcap=10.0),
        "fp16",
    ),
}

# Large logits (q scaled by 30): the online softmax must rescale without overflow or NaN.
LARGE_LOGIT_CASES = {
    "large_logits": (Case(b=1, sq=1000, sk=1000, hq=2, hk=1, d=128, q_scale=30.0), "bf16"),
    "large_logits_causal": (
        Case(b=1, sq=113, sk=4097, hq=2, hk=1, d=64, causal=True, q_scale=30.0),
        "fp16",
    ),
}

ALL_CASES = {
    **{f"hdim-{k}": v for k, v in HEAD_DIM_CASES.items()},
    **{f"seqlen-{k}": v for k, v in _named(SEQLEN_CASES).items()},
    **{f"gqa-{k}": v for k, v in _named(GQA_CASES).items()},
    **{f"mask-{k}": v for k, v in _named(MASK_CASES).items()},
    **{f"softcap-{k}": v for k, v in _named(SOFTCAP_CASES).items()},
    **{f"dead_rows-{k}": v for k, v in _named(DEAD_ROW_CASES).items()},
    **{f"no_nan-{k}": v for k, v in _named(LARGE_LOGIT_CASES).items()},
}


def _seed(case: Case, dtype: str) -> int:
    return seed_of(case, dtype, "gpu")


# --------------------------------------------------------------------------------------------
# Forward and backward grids


@pytest.mark.parametrize("case,dtype", _grid(ALL_CASES))
def test_forward(case, dtype):
    check_forward(case, DTYPES[dtype], CUDA, _seed(case, dtype), poison=True)


@pytest.mark.parametrize("case,dtype", _grid(ALL_CASES))
def test_backward(case, dtype):
    check_backward(case, DTYPES[dtype], CUDA, _seed(case, dtype), poison=True)


# --------------------------------------------------------------------------------------------
# Determinism: deterministic=True makes the backward bit-reproducible run to run

DETERMINISM_CASES = {
    "gqa8-causal": (Case(b=1, sq=1000, sk=1000, hq=16, hk=2, d=128, causal=True), "bf16"),
    "mqa-long": (Case(b=2, sq=4097, sk=4097, hq=4, hk=1, d=64), "fp16"),
    "window-softcap": (
        Case(b=1, sq=1000, sk=4097, hq=8, hk=2, d=256, window=(256, 0), softcap=30.0, q_scale=3.0),
        "bf16",
    ),
}


def _bits(x) -> np.ndarray:
    a = np.asarray(x)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)


@pytest.mark.parametrize("case,dtype", _grid(_named(DETERMINISM_CASES)))
def test_deterministic_backward_is_bit_identical(case, dtype):
    """Two backward runs (with a different call in between) give bit-identical dq, dk, dv."""
    dt = DTYPES[dtype]
    x = make_inputs(case, dt, _seed(case, dtype))
    other = make_inputs(case, dt, _seed(case, dtype) + 7)

    def fwd_bwd(q, k, v, dout, dlse):
        f = functools.partial(
            flash_attention,
            **case.flash_kwargs(),
            return_lse=True,
            deterministic=True,
            implementation=CUDA,
        )
        (out, lse), vjp = jax.vjp(f, q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    fn = jax.jit(fwd_bwd).lower(*x).compile()
    first = [_bits(a) for a in jax.block_until_ready(fn(*x))]
    jax.block_until_ready(fn(*other))
    second = [_bits(a) for a in jax.block_until_ready(fn(*x))]
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), first, second):
        diff = int((a != b).sum())
        print(f"{name}: {diff} of {a.size} elements differ between runs")
        assert diff == 0, f"{name}: {diff} elements differ between two deterministic runs"


def test_deterministic_backward_is_accurate():
    case, dtype = DETERMINISM_CASES["gqa8-causal"]
    check_backward(
        case, DTYPES[dtype], CUDA, _seed(case, dtype) + 1, poison=True, deterministic=True
    )


# --------------------------------------------------------------------------------------------
# Implementation choice and transforms on the CUDA path


def _qkv(case: Case, dtype=jnp.bfloat16, seed=0):
    return make_inputs(case, dtype, seed)[:3]


def test_auto_picks_cuda_on_hopper():
    case = Case(b=1, sq=113, sk=1000, hq=4, hk=2, d=128, causal=True)
    q, k, v = _qkv(case)
    assert make_config(q, k, v).implementation == "cuda"
    auto = jax.jit(functools.partial(flash_attention, causal=True))(q, k, v)
    cuda = jax.jit(functools.partial(flash_attention, causal=True, implementation=CUDA))(q, k, v)
    np.testing.assert_array_equal(np.asarray(auto, np.float32), np.asarray(cuda, np.float32))


def test_auto_respects_cpu_placement_under_jit():
    """ "auto" picks the kernel only for arrays that live on the GPU, also under jit: inputs
    placed on the CPU must run the reference path there (not be routed to the CUDA target)."""
    case = Case(b=1, sq=17, sk=113, hq=2, hk=1, d=64, causal=True)
    cpu = jax.devices("cpu")[0]
    q, k, v = (jax.device_put(x, cpu) for x in _qkv(case))
    got = jax.jit(functools.partial(flash_attention, causal=True))(q, k, v)
    assert got.devices() == {cpu}
    want = flash_attention(q, k, v, causal=True, implementation="reference")
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=0, atol=1e-2
    )


def test_float32_refused_by_cuda_and_routed_to_reference_by_auto():
    q, k, v = _qkv(Case(b=1, sq=17, sk=113, hq=2, hk=1, d=64), jnp.float32)
    with pytest.raises(UnsupportedError, match=r"bfloat16 or float16, got float32"):
        flash_attention(q, k, v, implementation=CUDA)
    assert make_config(q, k, v).implementation == "reference"


@pytest.mark.parametrize("d,dv", [(32, 32), (40, 40), (192, 128), (128, 64)])
def test_unlisted_head_dims_refused_cleanly_or_correct(d, dv):
    """A head-dim combination the kernels may not instantiate: implementation="cuda" must either
    raise UnsupportedError (before tracing) that names the head dim, or compute it correctly."""
    case = Case(b=1, sq=113, sk=1000, hq=4, hk=2, d=d, dv=dv, causal=True)
    q, k, v = _qkv(case)
    try:
        make_config(q, k, v, causal=True, implementation=CUDA)
    except UnsupportedError as e:
        assert "head" in str(e), f"reason does not name the head dim: {e}"
        return
    check_backward(case, jnp.bfloat16, CUDA, _seed(case, "bf16"), poison=True)


def _close_bf16(name, got, want, ulps=2):
    """Within ``ulps`` bf16 ulps of the largest magnitude: batching may change tile scheduling
    (e.g. split-KV heuristics), so bit equality is not required here."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    atol = ulps * 2.0**-8 * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    print(f"{name}: max err {err:.3e} (atol {atol:.3e})")
    assert np.isfinite(got).all() and err <= atol, f"{name}: max err {err:.3e} > {atol:.3e}"


def test_vmap_over_leading_axis():
    """vmap over a leading axis equals a loop of single calls, forward and gradients, with all
    of q, k, v batched and with k/v shared (in_axes None)."""
    n = 3
    case = Case(b=2, sq=113, sk=1000, hq=4, hk=2, d=128, causal=True)
    xs = [make_inputs(case, jnp.bfloat16, seed_of("vmap", i)) for i in range(n)]
    q, k, v, dout = (jnp.stack([x[j] for x in xs]) for j in range(4))
    f = functools.partial(flash_attention, causal=True, implementation=CUDA)

    def fwd_bwd(q, k, v, do):
        out, vjp = jax.vjp(f, q, k, v)
        return (out, *vjp(do))

    single = jax.jit(fwd_bwd)
    loop = [single(q[i], k[i], v[i], dout[i]) for i in range(n)]
    batched = jax.jit(jax.vmap(fwd_bwd))(q, k, v, dout)
    for i in range(n):
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            _close_bf16(f"{name}[{i}]", batched[j][i], loop[i][j])

    # k/v shared (in_axes None): vmap of a per-example VJP gives per-example dk/dv (stacked, not
    # summed), each equal to the single call's.
    shared = jax.jit(jax.vmap(fwd_bwd, in_axes=(0, None, None, 0)))(q, k[0], v[0], dout)
    loop = [single(q[i], k[0], v[0], dout[i]) for i in range(n)]
    for i in range(n):
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            _close_bf16(f"shared-kv {name}[{i}]", shared[j][i], loop[i][j])


def test_checkpoint_and_jit_grad_match_plain_grad():
    """jax.grad(jax.checkpoint(f)) recomputes the forward; with deterministic=True the gradients
    are bit-identical to plain jax.grad, and both match the oracle by the FA3 rule elsewhere."""
    case = Case(b=1, sq=1000, sk=1000, hq=4, hk=2, d=128, causal=True)
    x = make_inputs(case, jnp.bfloat16, seed_of("remat-gpu"))

    def loss(q, k, v):
        out = flash_attention(q, k, v, causal=True, deterministic=True, implementation=CUDA)
        return (out.astype(jnp.float32) * x.dout.astype(jnp.float32)).sum()

    plain = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*x[:3])
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(*x[:3])
    for name, a, b in zip(("dq", "dk", "dv"), plain, remat):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=name)
    # and the return_lse=False path (zero lse cotangent) agrees with the oracle's VJP
    ref = oracle(*x[:3], x.dout, **case.oracle_kwargs())
    for name, got, want in zip(("dq", "dk", "dv"), plain, ref[2:]):
        assert_tight(name, got, want, rtol=2e-2)  # loose: bf16 gradients; the grids apply FA3


def test_cuda_library_reports_available():
    assert jax_flash3.cuda_available(), jax_flash3.cuda_unavailable_reason()
