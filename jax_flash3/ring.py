"""Ring attention: sequence parallelism over one mesh axis, forward and backward.

Each device holds one query block and one K/V block of the sequence. For ``N`` devices the K/V
blocks travel the ring (``lax.ppermute`` to the next device) for ``N - 1`` hops while the local
query block attends to whichever block has arrived; the partial ``(out, lse)`` pairs merge in
fp32. The backward pass recomputes per hop from the *merged* ``(out, lse)`` residuals, and the dK/dV
accumulators travel with their K/V block, arriving home after ``N`` hops.

The kernels take one global mask (no per-call position offsets), so each (query block, K/V block)
pair must be fully visible, the causal diagonal, or skipped. For causal attention the contiguous
layout leaves device ``d`` with ``d + 1`` blocks of work and the rest idle; the zigzag layout
(device ``i`` holds sequence chunks ``i`` and ``2N - 1 - i`` of ``2N``) gives every device the same
work on every hop. ``ring_schedule`` says what each device computes on each hop; the forward and
backward follow it, and the tests count it.

Shapes are per device (inside ``jax.shard_map``): ``q (B, Sq, Hq, D)``, ``k (B, Sk, Hk, D)``,
``v (B, Sk, Hk, Dv)``, ``lse`` float32 ``(B, Hq, Sq)``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_flash3 import _backend
from jax_flash3._config import AttentionConfig

_F32 = jnp.float32

LAYOUTS = ("zigzag", "contiguous")

# SMs a hop's forward leaves to the K/V transfer's communication kernel (see _margin_spec); the
# environment variable JAX_FLASH3_RING_SM_MARGIN sets it (read when a ring is traced).
RING_SM_MARGIN = 0  # measured on 2 x H200 at 0/4/8/16: no effect above the ±5% noise (RESULTS.md)

# What one device computes on one hop, for its local query block against the visiting K/V block.
# With C = local length / 2 ("chunk"), a local block is 2 x 2 chunk tiles; TILES counts the tiles a
# kind touches (a causal diagonal tile counts as computed: the kernel runs it, half masked).
FULL = "full"              # every query sees every key: one non-causal call
DIAGONAL = "diagonal"      # the device's own K/V: one causal call over the local block
KV_FRONT = "kv_front"      # zigzag, K/V from a lower device: all queries vs the first K/V chunk
Q_BACK = "q_back"          # zigzag, K/V from a higher device: the second query chunk vs all K/V
SKIP = "skip"              # contiguous causal, K/V from a higher device: nothing visible
TILES = {FULL: 4, DIAGONAL: 3, KV_FRONT: 2, Q_BACK: 2, SKIP: 0}


def ring_schedule(num_devices: int, causal: bool, layout: str = "zigzag") -> tuple[tuple[str, ...], ...]:
    """``schedule[hop][device]``: the kind of work ``device`` does on ``hop`` (0 = its own K/V).

    K/V move from device ``d`` to ``d + 1`` each hop, so on hop ``t`` device ``d`` holds the K/V
    block of device ``(d - t) mod N``. Pure Python: the implementation dispatches on it and the
    tests count it (see ``TILES``).
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    schedule = []
    for hop in range(num_devices):
        row = []
        for device in range(num_devices):
            source = (device - hop) % num_devices
            if not causal:
                kind = FULL
            elif source == device:
                kind = DIAGONAL
            elif layout == "zigzag":
                # Zigzag: device d holds chunks (d, 2N-1-d). From a lower source s < d, both of our
                # query chunks see chunk s whole and chunk 2N-1-s not at all; from a higher one, only
                # our late chunk 2N-1-d sees anything, and it sees both of s's chunks whole.
                kind = KV_FRONT if source < device else Q_BACK
            else:
                kind = FULL if source < device else SKIP
            row.append(kind)
        schedule.append(tuple(row))
    return tuple(schedule)


def ring_tile_counts(num_devices: int, causal: bool, layout: str = "zigzag") -> list[int]:
    """Chunk tiles each device computes over the whole ring (equal for zigzag: ``2N + 1``)."""
    schedule = ring_schedule(num_devices, causal, layout)
    return [sum(TILES[row[d]] for row in schedule) for d in range(num_devices)]


# ---------------------------------------------------------------------------------------------
# Zigzag layout helpers (global arrays).


def _zigzag_order(num_devices: int) -> np.ndarray:
    return np.array([c for i in range(num_devices) for c in (i, 2 * num_devices - 1 - i)])


def _check_zigzag_args(x, num_devices, axis) -> int:
    """``axis`` normalized (negative counts from the end), after checking both arguments."""
    if not hasattr(x, "shape") or not hasattr(x, "ndim"):
        raise TypeError(f"x must be an array, got {type(x).__name__}")
    is_int = lambda a: isinstance(a, (int, np.integer)) and not isinstance(a, bool)
    if not is_int(num_devices) or num_devices < 1:
        raise ValueError(f"num_devices must be an int >= 1, got {num_devices!r}")
    if not is_int(axis) or not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis must be an int in [{-x.ndim}, {x.ndim}) for an array of rank {x.ndim}, got {axis!r}"
        )
    return int(axis) % x.ndim


def _permute_chunks(x, order: np.ndarray, axis: int):
    n = x.shape[axis]
    if n % len(order):
        raise ValueError(
            f"the sequence axis ({axis}, length {n}) must divide into 2 * num_devices = "
            f"{len(order)} equal chunks for the zigzag layout"
        )
    chunk = n // len(order)
    shape = x.shape[:axis] + (len(order), chunk) + x.shape[axis + 1:]
    chunks = jnp.reshape(x, shape)
    return jnp.reshape(jnp.take(chunks, jnp.asarray(order), axis=axis), x.shape)


def to_zigzag(x, num_devices: int, axis: int = 1):
    """Reorder a global sequence axis so that contiguous sharding over ``num_devices`` is zigzag.

    The axis splits into ``2 * num_devices`` chunks; the result holds chunks
    ``0, 2N-1, 1, 2N-2, ...``, so device ``i`` of a contiguous ``P(..., axis_name, ...)`` sharding
    gets chunks ``i`` and ``2N - 1 - i``: the layout causal ``ring_attention`` balances. ``axis`` is 1
    for q/k/v/out ``(B, S, H, D)`` and token arrays ``(B, S)``, 2 for lse ``(B, H, S)``.
    Reorder the token ids (or positions) once, before the model, rather than every layer.
    """
    axis = _check_zigzag_args(x, num_devices, axis)
    return _permute_chunks(x, _zigzag_order(num_devices), axis)


def from_zigzag(x, num_devices: int, axis: int = 1):
    """Inverse of ``to_zigzag``: back to natural sequence order."""
    axis = _check_zigzag_args(x, num_devices, axis)
    return _permute_chunks(x, np.argsort(_zigzag_order(num_devices)), axis)


# ---------------------------------------------------------------------------------------------
# Per-device machinery (inside shard_map, or a custom_partitioning lowering).


@dataclasses.dataclass(frozen=True)
class RingSpec:
    """Static description of one ring: the config, the mesh axis (or axes) and the layout."""

    cfg: AttentionConfig
    axis_name: tuple[str, ...]
    num_devices: int
    layout: str = "zigzag"
    # The mesh's (axis name, size) pairs in mesh order, where known (the automatic ring's plan);
    # otherwise _ppermute reads them from the mesh in context.
    mesh_axes: tuple[tuple[str, int], ...] = ()

    @property
    def causal(self) -> bool:
        return self.cfg.window_right == 0

    @property
    def full_cfg(self) -> AttentionConfig:
        return self.cfg.replace(window_left=-1, window_right=-1)

    @property
    def causal_cfg(self) -> AttentionConfig:
        return self.cfg.replace(window_left=-1, window_right=0)


def ring_support_error(cfg: AttentionConfig, sq_local: int, sk_local: int, layout: str) -> str | None:
    """Why ring attention cannot run this config on these per-device lengths, or None."""
    if layout not in LAYOUTS:
        return f"layout must be one of {LAYOUTS}, got {layout!r}"
    if cfg.window_left >= 0 or cfg.window_right > 0:
        return (
            f"ring attention supports full or causal attention, not a sliding window "
            f"(window_left={cfg.window_left}, window_right={cfg.window_right}): the kernels take "
            f"no per-block position offsets"
        )
    if cfg.window_right == 0:
        if sq_local != sk_local:
            return (
                f"causal ring attention needs equal query and key lengths per device, got "
                f"{sq_local} and {sk_local}"
            )
        if layout == "zigzag" and sq_local % 2:
            return f"the zigzag layout needs an even per-device sequence length, got {sq_local}"
    return None


def _axis_index(axis_name: tuple[str, ...]):
    return lax.axis_index(axis_name if len(axis_name) > 1 else axis_name[0])


def _mesh_ordered(axis_name: tuple[str, ...], mesh_axes=()):
    """``axis_name`` sorted into the mesh's axis order, and the mesh's axis sizes: from
    ``mesh_axes`` ((name, size) pairs in mesh order) or else the mesh in context; None when
    neither names them all."""
    if mesh_axes:
        names, sizes = tuple(a for a, _ in mesh_axes), dict(mesh_axes)
    else:
        try:
            mesh = jax.sharding.get_abstract_mesh()
            names, sizes = tuple(mesh.axis_names), dict(mesh.shape)
        except Exception:  # (older JAX, or no mesh in context)
            return None
    if not all(a in names for a in axis_name):
        return None
    return tuple(sorted(axis_name, key=names.index)), sizes


def _relinearize(i: int, src: tuple[str, ...], dst: tuple[str, ...], sizes) -> int:
    """Device index ``i`` over the axes ``src`` (first axis major) as an index over ``dst``."""
    coord = {}
    for a in reversed(src):
        i, coord[a] = divmod(i, sizes[a])
    out = 0
    for a in dst:
        out = out * sizes[a] + coord[a]
    return out


def _ppermute(x, axis_name: tuple[str, ...], perm, mesh_axes=()):
    """``lax.ppermute`` with ``perm`` over ``_axis_index(axis_name)``'s device numbering.

    Over several axes, ``lax.axis_index`` numbers devices in the order the names are given (which
    is also how a ``PartitionSpec`` lays the sequence out), but ``lax.ppermute``'s pairs number them
    in the mesh's axis order (seen with JAX 0.10): names given out of mesh order sent every block
    to the wrong device. So the pairs are renumbered into mesh order, and the names passed in it,
    which is right under either convention."""
    if all(src == dst for src, dst in perm):  # e.g. the even chunks of a 2-device zigzag reorder
        return x
    if len(axis_name) > 1:
        ordered = _mesh_ordered(axis_name, mesh_axes)
        if ordered is not None and ordered[0] != axis_name:
            names, sizes = ordered
            perm = [(_relinearize(s, axis_name, names, sizes),
                     _relinearize(d, axis_name, names, sizes)) for s, d in perm]
            axis_name = names
    name = axis_name if len(axis_name) > 1 else axis_name[0]
    return jax.tree.map(lambda a: lax.ppermute(a, name, perm), x)


def _shift(x, spec: RingSpec):
    """Send to the next device on the ring: one ``ppermute`` per dtype, not one per array.

    The arrays of one dtype (K and V; dK and dV) travel as one flat buffer. XLA's GPU scheduler
    keeps few collectives in flight at once (one by default), so two transfers beside one kernel
    call serialize: only the first hides under the compute. Packing costs one on-device copy.
    """
    n = spec.num_devices
    perm = [(i, (i + 1) % n) for i in range(n)]
    leaves, tree = jax.tree.flatten(x)
    out = list(leaves)
    by_dtype: dict = {}
    for i, a in enumerate(leaves):
        by_dtype.setdefault(jnp.dtype(a.dtype), []).append(i)
    for idx in by_dtype.values():
        if len(idx) == 1:
            out[idx[0]] = _ppermute(leaves[idx[0]], spec.axis_name, perm, spec.mesh_axes)
            continue
        flat = jnp.concatenate([leaves[i].reshape(-1) for i in idx])
        flat = _ppermute(flat, spec.axis_name, perm, spec.mesh_axes)
        offset = 0
        for i in idx:
            size = leaves[i].size
            out[i] = lax.slice_in_dim(flat, offset, offset + size).reshape(leaves[i].shape)
            offset += size
    return jax.tree.unflatten(tree, out)


def _fill(ref, value, shape, dtype=_F32):
    # full_like keeps ref's varying-manual-axes type, so switch branches agree under shard_map.
    return jnp.full_like(ref, value, shape=shape, dtype=dtype)


def _split(x, axis: int):
    half = x.shape[axis] // 2
    return lax.slice_in_dim(x, 0, half, axis=axis), lax.slice_in_dim(x, half, x.shape[axis], axis=axis)


def _dispatch(rows: Sequence[Sequence[str]], hop, spec: RingSpec, branches: dict, *operands):
    """Run this device's kind of work on ``hop`` (static int, or traced within ``rows``).

    ``rows`` are the schedule rows the hop may be (one row when static). A direct call when every
    device does the same kind; else a ``lax.switch`` on a table indexed by (hop, device).
    """
    kinds = sorted({kind for row in rows for kind in row})
    if len(kinds) == 1:
        return branches[kinds[0]](*operands)
    codes = jnp.asarray(np.array([[kinds.index(kind) for kind in row] for row in rows], np.int32))
    code = codes[hop, _axis_index(spec.axis_name)]
    return lax.switch(code, [branches[k] for k in kinds], *operands)


def _run_hops(spec: RingSpec, kv, carry, step):
    """Drive the ring: ``carry, y = step(rows, hop, kv, carry, in_flight)`` on every hop, K/V moving
    between; ``in_flight`` says whether the next block's transfer runs beside this hop.

    Hop 0 and the last hop are peeled and the middle hops run in one ``lax.scan``, so the compiled
    program holds three copies of the kernel calls whatever the ring size. Each hop issues the
    transfer of the next K/V block before its compute so the two overlap; the last hop sends none.
    Returns the final carry and the per-hop ``y`` as a list of pieces stacked on a leading axis.
    """
    schedule = ring_schedule(spec.num_devices, spec.causal, spec.layout)
    last = len(schedule) - 1
    stack = lambda y: jax.tree.map(lambda a: a[None], y)
    kv_next = _shift(kv, spec) if last > 0 else None
    carry, y = step(schedule[:1], 0, kv, carry, last > 0)
    ys = [stack(y)]
    if last == 0:
        return carry, ys
    kv = kv_next
    middle = schedule[1:last]
    if middle:

        def body(state, hop):
            kv, carry = state
            kv_next = _shift(kv, spec)
            carry, y = step(middle, hop, kv, carry, True)
            return (kv_next, carry), y

        (kv, carry), y = lax.scan(body, (kv, carry), jnp.arange(len(middle)))
        ys.append(y)
    carry, y = step(schedule[last:], 0, kv, carry, False)
    ys.append(stack(y))
    return carry, ys


def _merge(pieces):
    """Merge normalized partial attentions ``[(out (n, B, S, H, Dv), lse (n, B, H, S)), ...]``.

    One fp32 pass at the end instead of a rescale per hop: the per-hop outputs stay in the
    kernel's dtype and are read once. Rows whose lse is -inf everywhere give out 0, lse -inf.
    """
    m = functools.reduce(jnp.maximum, [lse.max(0) for _, lse in pieces])
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    total, acc = 0.0, 0.0
    for out, lse in pieces:
        w = jnp.exp(lse - m_safe)  # (n, B, H, S); exp(-inf) = 0 for rows a hop did not see
        total = total + w.sum(0)
        # Multiply-and-reduce (not einsum) so XLA emits one fused reduction, not n-length dots.
        acc = acc + (w.transpose(0, 1, 3, 2)[..., None] * out.astype(_F32)).sum(0)
    seen = total != 0  # a NaN total (NaN in a piece) stays NaN
    safe_total = jnp.where(seen, total, 1.0)
    lse = jnp.where(seen, m_safe + jnp.log(safe_total), -jnp.inf)
    out = acc / safe_total.transpose(0, 2, 1)[..., None]
    return out, lse


def _fwd_branches(spec: RingSpec) -> dict:
    full_cfg, causal_cfg = spec.full_cfg, spec.causal_cfg

    def full(q, k, v):
        return _backend.fwd(q, k, v, full_cfg)

    def diagonal(q, k, v):
        return _backend.fwd(q, k, v, causal_cfg)

    def kv_front(q, k, v):
        return _backend.fwd(q, _split(k, 1)[0], _split(v, 1)[0], full_cfg)

    def q_back(q, k, v):
        q_front, q_late = _split(q, 1)
        out, lse = _backend.fwd(q_late, k, v, full_cfg)
        b, sq_front, h, dv = q_front.shape[:3] + (v.shape[-1],)
        out = jnp.concatenate([_fill(out, 0.0, (b, sq_front, h, dv), out.dtype), out], axis=1)
        lse = jnp.concatenate([_fill(lse, -jnp.inf, (b, h, sq_front)), lse], axis=2)
        return out, lse

    def skip(q, k, v):
        b, sq, h = q.shape[:3]
        return _fill(q, 0.0, (b, sq, h, v.shape[-1]), q.dtype), _fill(q, -jnp.inf, (b, h, sq))

    return {FULL: full, DIAGONAL: diagonal, KV_FRONT: kv_front, Q_BACK: q_back, SKIP: skip}


def _margin_spec(spec: RingSpec) -> RingSpec:
    """The hop forwards that run beside a transfer leave SMs free for its communication kernel:
    the forward's grid is persistent (one CTA per SM, each holding a whole SM), so without a margin
    the transfer only starts once the forward ends and nothing overlaps."""
    margin = spec.cfg.sm_margin or int(os.environ.get("JAX_FLASH3_RING_SM_MARGIN", RING_SM_MARGIN))
    return dataclasses.replace(spec, cfg=spec.cfg.replace(sm_margin=int(margin)))


def ring_fwd(q, k, v, spec: RingSpec):
    """Per-device ring forward: ``(out (B, Sq, Hq, Dv) in q.dtype, lse f32 (B, Hq, Sq))``."""
    branches = _fwd_branches(spec)
    margin_spec = _margin_spec(spec)
    branches_in_flight = branches if margin_spec.cfg == spec.cfg else _fwd_branches(margin_spec)

    def step(rows, hop, kv, carry, in_flight):
        return carry, _dispatch(rows, hop, spec, branches_in_flight if in_flight else branches, q, *kv)

    _, pieces = _run_hops(spec, (k, v), (), step)
    out, lse = _merge(pieces)
    return out.astype(q.dtype), lse


def _bwd_branches(spec: RingSpec) -> dict:
    full_cfg, causal_cfg = spec.full_cfg, spec.causal_cfg

    def full(q, k, v, out, lse, dout, dlse):
        return _backend.bwd(q, k, v, out, lse, dout, dlse, full_cfg)

    def diagonal(q, k, v, out, lse, dout, dlse):
        return _backend.bwd(q, k, v, out, lse, dout, dlse, causal_cfg)

    def kv_front(q, k, v, out, lse, dout, dlse):
        dq, dk, dv = _backend.bwd(q, _split(k, 1)[0], _split(v, 1)[0], out, lse, dout, dlse, full_cfg)
        dk = jnp.concatenate([dk, _fill(dk, 0.0, dk.shape, dk.dtype)], axis=1)
        dv = jnp.concatenate([dv, _fill(dv, 0.0, dv.shape, dv.dtype)], axis=1)
        return dq, dk, dv

    def q_back(q, k, v, out, lse, dout, dlse):
        late = lambda x, axis=1: _split(x, axis)[1]
        dq, dk, dv = _backend.bwd(
            late(q), k, v, late(out), late(lse, 2), late(dout), late(dlse, 2), full_cfg
        )
        dq = jnp.concatenate([_fill(dq, 0.0, dq.shape, dq.dtype), dq], axis=1)
        return dq, dk, dv

    def skip(q, k, v, out, lse, dout, dlse):
        return tuple(_fill(x, 0.0, x.shape, x.dtype) for x in (q, k, v))

    return {FULL: full, DIAGONAL: diagonal, KV_FRONT: kv_front, Q_BACK: q_back, SKIP: skip}


def ring_bwd(q, k, v, out, lse, dout, dlse, spec: RingSpec):
    """Per-device ring backward from the merged residuals: ``(dq, dk, dv)`` in input dtypes.

    Every hop uses the global ``lse`` and ``out``, so ``P`` of a hop is exactly that block of the
    full softmax and the full ``dlse`` applies to every hop (it enters through the row term
    ``rowsum(dO * O) - dlse``).
    """
    if dlse is None:
        dlse = _fill(lse, 0.0, lse.shape)
    branches = _bwd_branches(spec)

    def step(rows, hop, kv, dkv, in_flight):
        dq, dk, dv = _dispatch(rows, hop, spec, branches, q, *kv, out, lse, dout, dlse)
        dk, dv = dk.astype(_F32), dv.astype(_F32)
        if dkv is not None:
            # dK/dV of this K/V block so far, accumulated in fp32 by the devices it visited. Sent
            # one hop late, so the transfer overlaps this hop's compute instead of following it.
            dk_in, dv_in = _shift(dkv, spec)
            dk, dv = dk_in + dk, dv_in + dv
        # dQ partials stay in the kernel's dtype and are summed once, in fp32, at the end.
        return (dk, dv), dq

    dkv, dq_pieces = _run_hops(spec, (k, v), None, step)
    # The block visited every device; one last hop takes its dK/dV home.
    dk, dv = _shift(dkv, spec) if spec.num_devices > 1 else dkv
    dq = functools.reduce(jnp.add, [piece.astype(_F32).sum(0) for piece in dq_pieces])
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


# ---------------------------------------------------------------------------------------------
# Contiguous <-> zigzag on sharded data: two ppermutes per array (used by the automatic ring).


def _zigzag_owner(chunk: int, n: int) -> int:
    return chunk if chunk < n else 2 * n - 1 - chunk


def _contiguous_to_zigzag_local(x, spec: RingSpec, axis: int):
    """Device d holds chunks (2d, 2d+1) -> device d holds chunks (d, 2N-1-d)."""
    n = spec.num_devices
    if n == 1:
        return x
    first, second = _split(x, axis)
    # Chunk 2d goes to its zigzag owner, chunk 2d+1 to its; both maps are permutations.
    to_even = [(d, _zigzag_owner(2 * d, n)) for d in range(n)]
    to_odd = [(d, _zigzag_owner(2 * d + 1, n)) for d in range(n)]
    even = _ppermute(first, spec.axis_name, to_even, spec.mesh_axes)
    odd = _ppermute(second, spec.axis_name, to_odd, spec.mesh_axes)
    # Device e's early chunk e is the even one when e is even.
    e_is_even = _axis_index(spec.axis_name) % 2 == 0
    return jnp.concatenate(
        [jnp.where(e_is_even, even, odd), jnp.where(e_is_even, odd, even)], axis=axis
    )


def _zigzag_to_contiguous_local(x, spec: RingSpec, axis: int):
    """Inverse of ``_contiguous_to_zigzag_local``."""
    n = spec.num_devices
    if n == 1:
        return x
    early, late = _split(x, axis)
    e_is_even = _axis_index(spec.axis_name) % 2 == 0
    even, odd = jnp.where(e_is_even, early, late), jnp.where(e_is_even, late, early)
    from_even = [(_zigzag_owner(2 * d, n), d) for d in range(n)]
    from_odd = [(_zigzag_owner(2 * d + 1, n), d) for d in range(n)]
    even = _ppermute(even, spec.axis_name, from_even, spec.mesh_axes)
    odd = _ppermute(odd, spec.axis_name, from_odd, spec.mesh_axes)
    return jnp.concatenate([even, odd], axis=axis)


def _reorders(spec: RingSpec) -> bool:
    return spec.causal and spec.layout == "zigzag" and spec.num_devices > 1


def ring_fwd_contiguous(q, k, v, spec: RingSpec):
    """``ring_fwd`` for contiguously sharded data; zigzag specs reorder in and out by ppermute."""
    if not _reorders(spec):
        return ring_fwd(q, k, v, spec)
    zz = functools.partial(_contiguous_to_zigzag_local, spec=spec)
    out, lse = ring_fwd(zz(q, axis=1), zz(k, axis=1), zz(v, axis=1), spec)
    back = functools.partial(_zigzag_to_contiguous_local, spec=spec)
    return back(out, axis=1), back(lse, axis=2)


def ring_bwd_contiguous(q, k, v, out, lse, dout, dlse, spec: RingSpec):
    """``ring_bwd`` for contiguously sharded data (see ``ring_fwd_contiguous``)."""
    if not _reorders(spec):
        return ring_bwd(q, k, v, out, lse, dout, dlse, spec)
    zz = functools.partial(_contiguous_to_zigzag_local, spec=spec)
    seq = lambda x: zz(x, axis=1)
    dlse = None if dlse is None else zz(dlse, axis=2)
    dq, dk, dv = ring_bwd(
        seq(q), seq(k), seq(v), seq(out), zz(lse, axis=2), seq(dout), dlse, spec
    )
    back = functools.partial(_zigzag_to_contiguous_local, spec=spec, axis=1)
    return back(dq), back(dk), back(dv)


# ---------------------------------------------------------------------------------------------
# Public explicit API (inside shard_map).


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ring(q, k, v, spec: RingSpec):
    return ring_fwd(q, k, v, spec)


def _ring_fwd_rule(q, k, v, spec: RingSpec):
    out, lse = ring_fwd(q, k, v, spec)
    return (out, lse), (q, k, v, out, lse)


def _ring_bwd_rule(spec: RingSpec, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = cotangents
    return ring_bwd(q, k, v, out, lse, dout, dlse, spec)


_ring.defvjp(_ring_fwd_rule, _ring_bwd_rule)


def _axis_tuple(axis_name) -> tuple[str, ...]:
    names = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)
    if not names:
        raise ValueError("axis_name must name at least one mesh axis")
    return names


def ring_attention(
    q,
    k,
    v,
    axis_name,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    deterministic: bool = False,
    implementation: str = "auto",
    layout: str = "zigzag",
):
    """Attention over a sequence sharded on ``axis_name``; call inside ``jax.shard_map``.

    Args:
      q: this device's queries ``(B, Sq, Hq, D)``.
      k, v: this device's keys ``(B, Sk, Hk, D)`` / values ``(B, Sk, Hk, Dv)``, same sequence
        sharding as ``q`` (GQA: ``Hq % Hk == 0``).
      axis_name: the mesh axis (or tuple of axes) the sequence is sharded over.
      causal: causal over the global sequence. Needs ``Sq == Sk`` per device.
      layout: how the global sequence is laid out over the devices when ``causal``:
        ``"zigzag"`` (default; device ``i`` holds chunks ``i`` and ``2N-1-i`` of ``2N``, see
        ``to_zigzag``, every device does the same work) or ``"contiguous"`` (device ``i`` holds
        chunk ``i`` of ``N``; correct, but device ``N-1`` does ``N`` blocks while device 0 does one).
        Ignored when not causal.
      softmax_scale, softcap, return_lse, deterministic, implementation: as ``flash_attention``.
      window: only unbounded sides are supported: ``None``, ``(-1, -1)``, or sides at least as
        long as the global sequence (``N * (Sq + Sk)``); sliding windows raise
        ``NotImplementedError``.

    Returns:
      what ``flash_attention`` returns for the local query block: ``out (B, Sq, Hq, Dv)``, or
      ``(out, lse (B, Hq, Sq))`` with ``return_lse``. Differentiable (custom VJP; K/V and dK/dV
      travel the ring with ``lax.ppermute``).
    """
    # Local import: attention.py imports this package's partitioner, which imports this module.
    from jax_flash3.attention import make_config

    if not isinstance(return_lse, (bool, jnp.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    names = _axis_tuple(axis_name)
    num_devices = int(lax.axis_size(names if len(names) > 1 else names[0]))
    given_window = window
    # make_config clamps a window side to the local Sq + Sk; a side spanning the whole global
    # sequence is unbounded here, so it is made None first (the rest make_config validates).
    span = num_devices * (int(q.shape[1]) + int(k.shape[1]))
    if isinstance(window, (tuple, list)) and len(window) == 2:
        window = tuple(None if isinstance(w, (int, np.integer)) and not isinstance(w, bool)
                       and w >= span else w for w in window)
    cfg = make_config(
        q, k, v,
        causal=causal, softmax_scale=softmax_scale, window=window, softcap=softcap,
        deterministic=deterministic, implementation=implementation,
    )
    if layout not in LAYOUTS:
        raise ValueError(f"ring_attention: layout must be one of {LAYOUTS}, got {layout!r}")
    why = ring_support_error(cfg, q.shape[1], k.shape[1], layout)
    if why is not None:
        if given_window is not None:
            why += f" (window={given_window!r})"
        raise NotImplementedError(f"ring_attention: {why}")
    spec = RingSpec(cfg=cfg, axis_name=names, num_devices=num_devices, layout=layout)
    out, lse = _ring(q, k, v, spec)
    return (out, lse) if return_lse else out
