import sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "tests")
import test_fp8 as t
from _oracle import oracle
IMPL = sys.argv[1] if len(sys.argv) > 1 else "cuda"
case = t.RUNNING_MAX_CASES["d128-prepass"]
for dims, val in ((64, 16.0), (16, 64.0), (16, 32.0), (0, 0.0)):
    x = t._moving_max_inputs(case, "negative", 7)
    if dims == 0:
        x = t.make_fp8_inputs(case, 7, ("block", "block", "bh"))
    elif dims != 64:
        q8 = np.array(x.q8); k8 = np.array(x.k8)
        sg = np.sign(q8[..., :1].astype(np.float32))
        q8[..., :64] = np.array(t.make_fp8_inputs(case, 7, ("block", "block", "bh")).q8)[..., :64]
        k8[..., :64] = np.array(t.make_fp8_inputs(case, 7, ("block", "block", "bh")).k8)[..., :64]
        q8[..., :dims] = (sg * val).astype(q8.dtype)
        k8[..., :dims] = k8.dtype.type(val)
        q = q8.astype(np.float64) * t.expand_descale(x.qd, case.b, case.sq, case.hq)
        k = k8.astype(np.float64) * t.expand_descale(x.kd, case.b, case.sk, case.hk)
        x = x._replace(q8=q8, k8=k8, q=q, k=k)
    out, lse = t.fp8_forward_fn(case, IMPL)(*x.args)
    ref = oracle(x.q, x.k, x.v, **case.oracle_kwargs())
    err = np.abs(np.asarray(lse, np.float64) - ref.lse)  # (b, h, sq)
    s = np.einsum("bqhd,bkhd->bhqk", x.q, np.repeat(x.k, case.hq // case.hk, axis=2))
    neg = s.max(-1) < 0
    tol = 1e-3 * np.abs(ref.lse).max()
    print(f"bias dims {dims} val {val}: max|lse| {np.abs(ref.lse).max():.1f} tol {tol:.3f} err max {err.max():.3e} mean {err.mean():.3e}; "
          f"neg rows {neg.mean():.2f} mixed {((s.min(-1) < 0) & ~neg).mean():.3f}: err max {err[neg].max(initial=0):.3e} mean {err[neg].mean() if neg.any() else 0:.3e}; "
          f"pos rows err max {err[~neg].max():.3e} mean {err[~neg].mean():.3e}")
