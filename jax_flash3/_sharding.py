"""Partitioning of the attention forward/backward under ``jit`` (custom_partitioning + Shardy).

``fwd`` and ``bwd`` have the signatures of ``_backend.fwd`` / ``_backend.bwd``. Under ``jit`` with
sharded inputs each becomes one ``custom_partitioning`` call whose Shardy rule names every
dimension (below), and whose ``_partition`` callback picks the per-device program:

- batch and head axes: the local call on the local shard, no collectives. GQA query heads are a
  compound factor ``(h g)`` (KV head ``h`` major, group ``g`` minor), so sharding the query heads
  shards the KV heads with them. When the head mesh axes do not divide the KV heads (e.g. MQA over
  8 devices) K/V stay replicated and each device picks the KV heads its query heads use (the
  backward then sums dK/dV over the head axes).
- query sequence with K/V replicated along the sequence: local. The kernels take one global mask,
  so with causal or windowed masks each shard runs the call over exactly the keys its rows can see
  (a ``lax.switch`` on the shard index, static slices per shard); the backward sums dK/dV over the
  query-sequence axes.
- K/V sequence sharded: ring attention over those mesh axes (``ring.py``), queries sharded the
  same way. Causal rings reorder contiguous shards into the zigzag layout with ``ppermute`` and
  back, so every device does the same work. Configs the ring cannot take (sliding windows, causal
  with different query and key lengths) gather K/V instead.
- head dim (D or Dv) sharded: refused with a one-line error naming the dimension.

Outside ``jit``-with-shardings (one device, or inside ``shard_map``) the call lowers to the plain
local computation. ``vmap`` folds the mapped axis into the batch axis.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_flash3 import _backend, ring
from jax_flash3._config import AttentionConfig

_F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# Shardy rules. Factors: b batch, q query sequence, k key sequence, h KV heads, g query heads per
# KV head (GQA: query heads are the compound (h g), KV head major), d q/k head dim, v value head
# dim. With Hq == Hk the heads are one factor h.
#
#   fwd: b q (h g) d, b k h d, b k h v -> b q (h g) v, b (h g) q
#   bwd: q, k, v, out, lse, dout, dlse -> dq, dk, dv with the same factors.
#
# Shardy fills a compound factor major-first and splits a mesh axis into sub-axes when it does not
# fit (8 query heads over an 8-device axis with 2 KV heads: h gets a 2-way sub-axis), and JAX
# cannot hand such a sharding to the partition callback. So on meshes where some head sharding
# would split an axis, query and KV heads become independent factors (n and h) and ``_partition``
# makes them consistent itself.


def _compound_fits(mesh, num_kv_heads: int, group: int) -> bool:
    """Whether every head sharding over this mesh fills (h g) without splitting a mesh axis."""
    sizes = [int(s) for s in getattr(mesh, "shape", {}).values()] if mesh is not None else []
    for count in range(1, len(sizes) + 1):
        for axes in itertools.permutations(sizes, count):
            if (num_kv_heads * group) % math.prod(axes):
                continue  # not a valid head sharding anyway
            room = [num_kv_heads, group]
            for size in axes:
                slot = 0 if room[0] > 1 else 1
                if room[slot] % size:
                    return False
                room[slot] //= size
    return True


def _head_factors(group: int, num_kv_heads: int, mesh) -> tuple[str, dict]:
    """The query-heads factor expression and the factor sizes it needs."""
    if group == 1:
        return "h", {}
    if num_kv_heads > 1 and _compound_fits(mesh, num_kv_heads, group):
        return "(h g)", {"g": group}
    return "n", {}


def _fwd_shardy_rule(group: int, num_kv_heads: int, *args) -> tuple[str, dict]:
    # custom_partitioning calls this as rule(*static_args, mesh, operand_types, result_types).
    heads, sizes = _head_factors(group, num_kv_heads, args[-3])
    return f"b q {heads} d, b k h d, b k h v -> b q {heads} v, b {heads} q", sizes


def _bwd_shardy_rule(group: int, num_kv_heads: int, *args) -> tuple[str, dict]:
    heads, sizes = _head_factors(group, num_kv_heads, args[-3])
    q, kv, o, lse = f"b q {heads} d", "b k h d", f"b q {heads} v", f"b {heads} q"
    return f"{q}, {kv}, b k h v, {o}, {lse}, {o}, {lse} -> {q}, {kv}, b k h v", sizes


# ---------------------------------------------------------------------------------------------
# The plan: which mesh axes shard what, decided once from the operand shardings, shared by the
# forward and backward partitions so both run the same per-device program.


@dataclasses.dataclass(frozen=True)
class _Plan:
    batch: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    kv_heads_sharded: bool = True  # False: K/V replicated over `heads`, each device picks its KV heads
    q_seq: tuple[str, ...] = ()  # query-sequence axes (K/V sequence replicated)
    ring: tuple[str, ...] = ()  # K/V sequence axes: ring attention (q_seq == ring then)
    ring_layout: str = "contiguous"
    num_heads: tuple[int, int] = (1, 1)  # (Hq, Hk), global
    axis_sizes: tuple[tuple[str, int], ...] = ()

    def size(self, axes: tuple[str, ...]) -> int:
        sizes = dict(self.axis_sizes)
        return math.prod(sizes[a] for a in axes)

    @property
    def seq(self) -> tuple[str, ...]:
        return self.ring or self.q_seq


def _spec_axes(spec, dim: int) -> tuple[str, ...]:
    entry = spec[dim] if dim < len(spec) else None
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _axes_size(mesh, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _head_dim_error(names, axes) -> ValueError:
    return ValueError(
        f"flash_attention: cannot shard the head dimension (axis 3, head_dim of {names}) over mesh "
        f"axes {axes}; shard batch, heads or sequence instead"
    )


def _make_plan(cfg: AttentionConfig, mesh, q, k, v) -> _Plan:
    """``q, k, v``: ShapeDtypeStructs with the shardings the partitioner proposes."""
    shardings = [x.sharding for x in (q, k, v)]
    if not all(isinstance(s, NamedSharding) for s in shardings):
        return _Plan(num_heads=(q.shape[2], k.shape[2]))  # no named mesh axes: compute replicated
    qs, ks, vs = ([_spec_axes(s.spec, i) for i in range(4)] for s in shardings)
    for names, axes in (("q/k", qs[3] + ks[3]), ("v", vs[3])):
        if axes:
            raise _head_dim_error(names, tuple(dict.fromkeys(axes)))

    b, sq, hq = q.shape[:3]
    sk, hk = k.shape[1], k.shape[2]
    batch = qs[0] or ks[0]
    if b % _axes_size(mesh, batch):
        batch = ()
    used = set(batch)
    heads = tuple(a for a in (qs[2] or ks[2]) if a not in used)
    if hq % _axes_size(mesh, heads):
        heads = ()
    used |= set(heads)
    kv_seq = tuple(a for a in (ks[1] or vs[1]) if a not in used)
    q_seq = tuple(a for a in qs[1] if a not in used)
    if sq % _axes_size(mesh, q_seq):
        q_seq = ()
    plan = {
        "batch": batch,
        "heads": heads,
        "kv_heads_sharded": hk % _axes_size(mesh, heads) == 0,
        "q_seq": q_seq,
        "num_heads": (hq, hk),
        "axis_sizes": tuple((a, int(mesh.shape[a])) for a in mesh.axis_names),
    }
    n = _axes_size(mesh, kv_seq)
    if (
        kv_seq
        and sq % n == 0
        and sk % n == 0
        and ring.ring_support_error(cfg, sq // n, sk // n, "contiguous") is None
    ):
        zigzag = cfg.window_right == 0 and (sq // n) % 2 == 0
        plan.update(q_seq=kv_seq, ring=kv_seq, ring_layout="zigzag" if zigzag else "contiguous")
    # Otherwise a sharded K/V sequence (sliding window, causal with Sq != Sk, indivisible lengths)
    # is gathered by the partitioner, and the query shards run locally.
    return _Plan(**plan)


def _entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _q_spec(plan: _Plan) -> P:
    return P(_entry(plan.batch), _entry(plan.seq), _entry(plan.heads), None)


def _kv_spec(plan: _Plan) -> P:
    heads = plan.heads if plan.kv_heads_sharded else ()
    return P(_entry(plan.batch), _entry(plan.ring), _entry(heads), None)


def _lse_spec(plan: _Plan) -> P:
    return P(_entry(plan.batch), _entry(plan.heads), _entry(plan.seq))


# ---------------------------------------------------------------------------------------------
# Per-device pieces.


def _axis_index(axes: tuple[str, ...]):
    return lax.axis_index(axes if len(axes) > 1 else axes[0])


def _psum_f32(x, axes: tuple[str, ...]):
    if not axes:
        return x
    return lax.psum(x.astype(_F32), axes if len(axes) > 1 else axes[0]).astype(x.dtype)


def _select_kv_heads(plan: _Plan, local_q_heads: int, k, v):
    """K/V replicated over the head axes: take the KV heads this device's query heads use.

    Returns ``(k, v, kv_head_index)``; the local call then sees a consistent GQA (or MHA) layout.
    """
    hq, hk = plan.num_heads
    group = hq // hk
    first = _axis_index(plan.heads) * local_q_heads
    if group % local_q_heads == 0:  # all local query heads share one KV head
        idx = (first // group)[None]
        take = lambda x: lax.dynamic_slice_in_dim(x, idx[0], 1, axis=2)
    else:
        idx = (first + jnp.arange(local_q_heads)) // group
        take = lambda x: jnp.take(x, idx, axis=2)
    return take(k), take(v), idx


def _scatter_kv_heads(idx, grad, full_shape):
    full = jnp.zeros(full_shape, _F32).at[:, :, idx].add(grad.astype(_F32))
    return full.astype(grad.dtype)


def _needs_offsets(cfg: AttentionConfig) -> bool:
    return cfg.window_left >= 0 or cfg.window_right >= 0


def _q_shard_key_ranges(cfg: AttentionConfig, sq: int, sk: int, n: int) -> list[tuple[int, int, int]]:
    """Per query shard ``c`` of ``n``: ``(first_key, end_key, query_pad)`` for one local call.

    The kernels align the mask bottom-right: query row ``i`` of a call with ``Sq'`` rows and keys
    ``[a, b)`` has its diagonal at global key ``a + i + (b - a) - Sq'``. Shard ``c`` needs its
    diagonal at ``c * Sq/n + i + Sk - Sq``; ending the keys at ``b`` and padding the queries with
    ``b - base`` trailing rows (discarded) puts it there while still reaching every visible key.
    Causal windows need no padding (``b == base``).
    """
    sl = sq // n
    ranges = []
    for c in range(n):
        base = (c + 1) * sl + sk - sq
        end_visible = sk if cfg.window_right < 0 else min(sk, base + cfg.window_right)
        end = min(sk, max(end_visible, base, 0))
        first = 0 if cfg.window_left < 0 else c * sl + sk - sq - cfg.window_left
        first = min(max(first, 0), end)
        ranges.append((first, end, end - base))
    return ranges


def _pad_rows(x, pad: int, axis: int, value):
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _one_location(fn):
    """``fn`` traced with one source traceback for all its operations (the caller's).

    The sequence-sharded paths below trace one branch per shard under ``lax.switch``; on the
    pure-JAX path each branch holds ``lax.scan`` loops. XLA's while-loop simplifier, inlining those
    loops, compares the stack frames of every operation's location, and with the deep per-op
    tracebacks of these branches that took hours: ``jit(grad(...))`` of ``precision="fp8"``
    (bfloat16, residual term on, causal, query sequence sharded) never finished compiling. One
    shared traceback per call gives the same compile in about a second. Error messages and
    profiles then point at the call into jax_flash3 rather than into its internals.
    """
    try:
        from jax._src import source_info_util
        from jax._src.lib import xla_client

        get_traceback, user_context = xla_client.Traceback.get_traceback, source_info_util.user_context
    except (ImportError, AttributeError):  # another JAX layout: trace as is
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with user_context(get_traceback()):
            return fn(*args, **kwargs)

    return wrapped


@_one_location
def _q_sharded_fwd(plan: _Plan, cfg: AttentionConfig, q, k, v):
    n = plan.size(plan.q_seq)
    sl, sk = q.shape[1], k.shape[1]
    ranges = _q_shard_key_ranges(cfg, sl * n, sk, n)

    def branch(first, end, pad):
        def run(q, k, v):
            b, _, h = q.shape[:3]
            if end == first:  # nothing visible to this shard
                return (jnp.zeros((b, sl, h, v.shape[-1]), q.dtype),
                        jnp.full((b, h, sl), -jnp.inf, _F32))
            out, lse = _backend.fwd(
                _pad_rows(q, pad, 1, 0), k[:, first:end], v[:, first:end], cfg
            )
            return out[:, :sl], lse[:, :, :sl]

        return run

    branches = [branch(*r) for r in ranges]
    if len(set(ranges)) == 1:
        return branches[0](q, k, v)
    return lax.switch(_axis_index(plan.q_seq), branches, q, k, v)


@_one_location
def _q_sharded_bwd(plan: _Plan, cfg: AttentionConfig, q, k, v, out, lse, dout, dlse):
    n = plan.size(plan.q_seq)
    sl, sk = q.shape[1], k.shape[1]
    ranges = _q_shard_key_ranges(cfg, sl * n, sk, n)

    def branch(first, end, pad):
        def run(q, k, v, out, lse, dout, dlse):
            if end == first:
                return jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v)
            # Padded rows: lse +inf makes every p exactly 0 and dout 0 makes their terms vanish.
            dq, dk, dv = _backend.bwd(
                _pad_rows(q, pad, 1, 0), k[:, first:end], v[:, first:end],
                _pad_rows(out, pad, 1, 0), _pad_rows(lse, pad, 2, jnp.inf),
                _pad_rows(dout, pad, 1, 0), _pad_rows(dlse, pad, 2, 0), cfg,
            )
            keys = ((0, 0), (first, sk - end), (0, 0), (0, 0))
            return dq[:, :sl], jnp.pad(dk, keys), jnp.pad(dv, keys)

        return run

    branches = [branch(*r) for r in ranges]
    args = (q, k, v, out, lse, dout, dlse)
    if len(set(ranges)) == 1:
        return branches[0](*args)
    return lax.switch(_axis_index(plan.q_seq), branches, *args)


def _ring_spec(plan: _Plan, cfg: AttentionConfig) -> ring.RingSpec:
    return ring.RingSpec(
        cfg=cfg, axis_name=plan.ring, num_devices=plan.size(plan.ring),
        layout=plan.ring_layout, mesh_axes=plan.axis_sizes,
    )


def _local_fwd(plan: _Plan, cfg: AttentionConfig, q, k, v):
    if plan.heads and not plan.kv_heads_sharded:
        k, v, _ = _select_kv_heads(plan, q.shape[2], k, v)
    if plan.ring:
        return ring.ring_fwd_contiguous(q, k, v, _ring_spec(plan, cfg))
    if plan.q_seq and _needs_offsets(cfg):
        return _q_sharded_fwd(plan, cfg, q, k, v)
    return _backend.fwd(q, k, v, cfg)


def _local_bwd(plan: _Plan, cfg: AttentionConfig, q, k, v, out, lse, dout, dlse):
    kv_shape = (k.shape, v.shape)
    idx = None
    if plan.heads and not plan.kv_heads_sharded:
        k, v, idx = _select_kv_heads(plan, q.shape[2], k, v)
    if plan.ring:
        dq, dk, dv = ring.ring_bwd_contiguous(q, k, v, out, lse, dout, dlse, _ring_spec(plan, cfg))
    elif plan.q_seq and _needs_offsets(cfg):
        dq, dk, dv = _q_sharded_bwd(plan, cfg, q, k, v, out, lse, dout, dlse)
    else:
        dq, dk, dv = _backend.bwd(q, k, v, out, lse, dout, dlse, cfg)
    # K/V replicated over an axis whose devices each saw only part of the queries: sum their dK/dV.
    reduce_axes = () if plan.ring else plan.q_seq
    if idx is not None:
        dk = _scatter_kv_heads(idx, dk, kv_shape[0])
        dv = _scatter_kv_heads(idx, dv, kv_shape[1])
        reduce_axes += plan.heads
    return dq, _psum_f32(dk, reduce_axes), _psum_f32(dv, reduce_axes)


# ---------------------------------------------------------------------------------------------
# custom_partitioning callbacks. Static argument first (cfg), then mesh, operand and result shapes.


def _fwd_partition(cfg: AttentionConfig, mesh, arg_shapes, result_shape):
    plan = _make_plan(cfg, mesh, *arg_shapes[:3])
    q_sh, kv_sh, lse_sh = (NamedSharding(mesh, s) for s in (_q_spec(plan), _kv_spec(plan), _lse_spec(plan)))
    lower = functools.partial(_local_fwd, plan, cfg)
    return mesh, lower, (q_sh, lse_sh), (q_sh, kv_sh, kv_sh)


def _fwd_infer(cfg: AttentionConfig, mesh, arg_shapes, result_shape):
    plan = _make_plan(cfg, mesh, *arg_shapes[:3])
    return NamedSharding(mesh, _q_spec(plan)), NamedSharding(mesh, _lse_spec(plan))


def _bwd_partition(cfg: AttentionConfig, mesh, arg_shapes, result_shape):
    plan = _make_plan(cfg, mesh, *arg_shapes[:3])
    q_sh, kv_sh, lse_sh = (NamedSharding(mesh, s) for s in (_q_spec(plan), _kv_spec(plan), _lse_spec(plan)))
    lower = functools.partial(_local_bwd, plan, cfg)
    return mesh, lower, (q_sh, kv_sh, kv_sh), (q_sh, kv_sh, kv_sh, q_sh, lse_sh, q_sh, lse_sh)


def _bwd_infer(cfg: AttentionConfig, mesh, arg_shapes, result_shape):
    plan = _make_plan(cfg, mesh, *arg_shapes[:3])
    q_sh, kv_sh = NamedSharding(mesh, _q_spec(plan)), NamedSharding(mesh, _kv_spec(plan))
    return q_sh, kv_sh, kv_sh


def _fwd_impl(q, k, v, cfg: AttentionConfig):
    return _backend.fwd(q, k, v, cfg)


def _bwd_impl(q, k, v, out, lse, dout, dlse, cfg: AttentionConfig):
    return _backend.bwd(q, k, v, out, lse, dout, dlse, cfg)


@functools.cache
def _fwd_op(group: int, num_kv_heads: int) -> custom_partitioning:
    op = custom_partitioning(_fwd_impl, static_argnums=(3,))
    op.def_partition(
        partition=_fwd_partition, infer_sharding_from_operands=_fwd_infer,
        sharding_rule=functools.partial(_fwd_shardy_rule, group, num_kv_heads),
    )
    return op


@functools.cache
def _bwd_op(group: int, num_kv_heads: int) -> custom_partitioning:
    op = custom_partitioning(_bwd_impl, static_argnums=(7,))
    op.def_partition(
        partition=_bwd_partition, infer_sharding_from_operands=_bwd_infer,
        sharding_rule=functools.partial(_bwd_shardy_rule, group, num_kv_heads),
    )
    return op


# ---------------------------------------------------------------------------------------------
# vmap: custom_partitioning has no batching rule, so fold the mapped axis into the batch axis
# (every operand and result of both calls has batch as its leading dimension).


def _fold_into_batch(fn, axis_size, in_batched, *args):
    if axis_size == 0:  # vmap over an empty axis: empty results of the per-example shapes
        per = [jax.ShapeDtypeStruct(x.shape[1:] if b else x.shape, x.dtype)
               for x, b in zip(args, in_batched)]
        outs = jax.eval_shape(fn, *per)
        return tuple(jnp.zeros((0,) + o.shape, o.dtype) for o in outs), tuple(True for _ in outs)
    args = [
        x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
        for x, batched in zip(args, in_batched)
    ]
    outs = fn(*(x.reshape((axis_size * x.shape[1],) + x.shape[2:]) for x in args))
    outs = tuple(o.reshape((axis_size, o.shape[0] // axis_size) + o.shape[1:]) for o in outs)
    return outs, tuple(True for _ in outs)


@functools.cache
def _batchable_fwd(cfg: AttentionConfig):
    @jax.custom_batching.custom_vmap
    def call(q, k, v):
        return tuple(_fwd_op(q.shape[2] // k.shape[2], k.shape[2])(q, k, v, cfg))

    call.def_vmap(functools.partial(_fold_into_batch, call))
    return call


@functools.cache
def _batchable_bwd(cfg: AttentionConfig):
    @jax.custom_batching.custom_vmap
    def call(q, k, v, out, lse, dout, dlse):
        return tuple(_bwd_op(q.shape[2] // k.shape[2], k.shape[2])(q, k, v, out, lse, dout, dlse, cfg))

    call.def_vmap(functools.partial(_fold_into_batch, call))
    return call


# ---------------------------------------------------------------------------------------------
# Explicit sharding (sharding in types): the kernels' call is opaque to JAX's per-op sharding
# rules, so run it in auto mode over the explicit axes and give the results the types a caller
# expects (out/dq like q, lse over q's batch/heads/sequence, dk/dv like k/v).


def _explicit_spec(x):
    """x's PartitionSpec when its type carries explicit mesh axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "axis_names", ()):
        return None
    explicit = getattr(mesh, "explicit_axes", ())
    if not explicit:
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    return spec if any(e is not None for e in spec) else None


def _in_auto_mode(fn, args, out_specs):
    explicit = [x for x in args if _explicit_spec(x) is not None]
    if not explicit:
        return fn(*args)
    auto_axes = getattr(jax.sharding, "auto_axes", None)
    if auto_axes is None:  # a JAX without sharding in types has no explicit axes to lift
        return fn(*args)
    mesh = jax.typeof(explicit[0]).sharding.mesh
    out_shardings = tuple(NamedSharding(mesh, spec) for spec in out_specs)
    return auto_axes(fn, axes=tuple(mesh.explicit_axes), out_sharding=out_shardings)(*args)


def _type_specs(q, k, v):
    qs = _explicit_spec(q) or (None,) * 4
    ks, vs = _explicit_spec(k) or (None,) * 4, _explicit_spec(v) or (None,) * 4
    out = P(qs[0], qs[1], qs[2], None)
    lse = P(qs[0], qs[2], qs[1])
    return P(*qs), P(*ks), P(*vs), out, lse


def fwd(q, k, v, cfg: AttentionConfig):
    """``(out (B, Sq, Hq, Dv), lse f32 (B, Hq, Sq))``, partitioned as the module docstring says."""
    _, _, _, out_spec, lse_spec = _type_specs(q, k, v)
    return _in_auto_mode(_batchable_fwd(cfg), (q, k, v), (out_spec, lse_spec))


def bwd(q, k, v, out, lse, dout, dlse, cfg: AttentionConfig):
    """``(dq, dk, dv)``; ``dlse`` None means zeros."""
    if dlse is None:
        dlse = jnp.zeros(lse.shape, _F32)
    q_spec, k_spec, v_spec, _, _ = _type_specs(q, k, v)
    args = (q, k, v, out, lse, dout, dlse.astype(_F32))
    return _in_auto_mode(_batchable_bwd(cfg), args, (q_spec, k_spec, v_spec))
