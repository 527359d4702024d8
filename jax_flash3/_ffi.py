"""The one place that loads jax_flash3's CUDA library, registers its FFI targets and calls them.

Importing this module never fails: when the library (or a GPU) is missing, ``available()`` is
False and ``unavailable_reason()`` says why, and the public API falls back to the reference path
(or, with ``implementation="cuda"``, raises that reason).
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash3._config import AttentionConfig

LIBRARY_NAME = "libjax_flash3_cuda.so"
ENV_LIBRARY = "JAX_FLASH3_LIBRARY"

# Target name -> exported handler symbol. Names are process-global in XLA, hence the prefix.
TARGETS = {
    "jax_flash3_fwd": "jax_flash3_fwd",
    "jax_flash3_bwd": "jax_flash3_bwd",
}
# Registered when the library has it (a library built before FP8 existed lacks the symbol).
FP8_TARGET = "jax_flash3_fwd_fp8"

_DTYPE_CODES = {jnp.dtype(jnp.bfloat16): 0, jnp.dtype(jnp.float16): 1}
CUDA_DTYPES = tuple(_DTYPE_CODES)

_state: dict = {}


def _candidates() -> list[pathlib.Path]:
    paths = []
    if os.environ.get(ENV_LIBRARY):
        paths.append(pathlib.Path(os.environ[ENV_LIBRARY]))
    here = pathlib.Path(__file__).parent
    paths.append(here / LIBRARY_NAME)  # where an install (wheel, Bazel runfiles) puts it
    if here.resolve() != here:
        paths.append(here.resolve() / LIBRARY_NAME)  # a symlinked tree's source directory
    return paths


def _load():
    if "lib" in _state or "error" in _state:
        return _state.get("lib")
    tried = []
    for path in _candidates():
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        for fn in ("jax_flash3_fwd_workspace_bytes", "jax_flash3_bwd_workspace_bytes"):
            getattr(lib, fn).restype = ctypes.c_size_t
            getattr(lib, fn).argtypes = [ctypes.c_int] * 11
        try:
            for target, symbol in TARGETS.items():
                jax.ffi.register_ffi_target(
                    target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA"
                )
        except Exception as e:  # a jaxlib without the CUDA plugin cannot register CUDA targets
            tried.append(f"{path} (registering FFI targets failed: {e})")
            continue
        _state["fp8"] = _register_fp8(lib)
        _state["lib"] = lib
        _state["path"] = path
        return lib
    _state["error"] = "jax_flash3's CUDA library was not found or did not load: " + "; ".join(tried)
    return None


def _register_fp8(lib) -> str | None:
    """Register the FP8 forward target; None on success, else why FP8 cannot run on CUDA."""
    try:
        handler = getattr(lib, FP8_TARGET)
        ws = getattr(lib, "jax_flash3_fwd_fp8_workspace_bytes")
    except AttributeError:
        return "this build of jax_flash3's CUDA library has no FP8 forward (rebuild it)"
    ws.restype = ctypes.c_size_t
    ws.argtypes = [ctypes.c_int] * 9
    try:
        jax.ffi.register_ffi_target(FP8_TARGET, jax.ffi.pycapsule(handler), platform="CUDA")
    except Exception as e:  # noqa: BLE001
        return f"registering the FP8 FFI target failed: {e}"
    return None


def library_path() -> pathlib.Path | None:
    _load()
    return _state.get("path")


@functools.lru_cache(maxsize=None)
def _hopper_reason() -> str | None:
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return "no GPU backend is available to JAX"
    for d in gpus:
        cc = getattr(d, "compute_capability", None)
        if cc is not None and str(cc).split(".")[0] == "9":
            return None
    ccs = sorted({str(getattr(d, "compute_capability", "?")) for d in gpus})
    return f"jax_flash3's CUDA kernels need an sm_90 (Hopper) GPU; found compute capability {ccs}"


def unavailable_reason() -> str | None:
    """None when the CUDA path can run here; otherwise a one-line reason."""
    if _load() is None:
        return _state["error"]
    return _hopper_reason()


def available() -> bool:
    return unavailable_reason() is None


def fp8_unavailable_reason() -> str | None:
    """None when the CUDA FP8 forward can run here; otherwise a one-line reason."""
    why = unavailable_reason()
    if why is not None:
        return why
    return _state.get("fp8")


def _dims(q, k, v):
    b, sq, hq, d = q.shape[-4:]
    sk, hk, dv = k.shape[-3], k.shape[-2], v.shape[-1]
    return b, sq, sk, hq, hk, d, dv


def _workspace(fn_name: str, q, k, v, cfg: AttentionConfig) -> int:
    lib = _load()
    b, sq, sk, hq, hk, d, dv = _dims(q, k, v)
    n = getattr(lib, fn_name)(
        b, sq, sk, hq, hk, d, dv, cfg.window_left, cfg.window_right,
        _DTYPE_CODES[jnp.dtype(q.dtype)], int(cfg.deterministic),
    )
    return max(int(n), 16)


def _attrs(cfg: AttentionConfig) -> dict:
    return dict(
        softmax_scale=np.float32(cfg.softmax_scale),
        window_left=np.int32(cfg.window_left),
        window_right=np.int32(cfg.window_right),
        softcap=np.float32(cfg.softcap),
    )


def fwd(q, k, v, cfg: AttentionConfig):
    """CUDA forward: ``(out (B, Sq, Hq, Dv) q.dtype, lse f32 (B, Hq, Sq))``."""
    b, sq, sk, hq, hk, d, dv = _dims(q, k, v)
    ws = _workspace("jax_flash3_fwd_workspace_bytes", q, k, v, cfg)
    out_types = (
        jax.ShapeDtypeStruct((b, sq, hq, dv), q.dtype),
        jax.ShapeDtypeStruct((b, hq, sq), jnp.float32),
        jax.ShapeDtypeStruct((ws,), jnp.uint8),
    )
    call = jax.ffi.ffi_call("jax_flash3_fwd", out_types, vmap_method="broadcast_all")
    out, lse, _ = call(q, k, v, sm_margin=np.int32(cfg.sm_margin), **_attrs(cfg))
    return out, lse


def bwd(q, k, v, out, lse, dout, dlse, cfg: AttentionConfig):
    """CUDA backward: ``(dq, dk, dv)`` in the dtypes of q, k, v."""
    ws = _workspace("jax_flash3_bwd_workspace_bytes", q, k, v, cfg)
    out_types = (
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct(k.shape, k.dtype),
        jax.ShapeDtypeStruct(v.shape, v.dtype),
        jax.ShapeDtypeStruct((ws,), jnp.uint8),
    )
    call = jax.ffi.ffi_call("jax_flash3_bwd", out_types, vmap_method="broadcast_all")
    dq, dk, dv, _ = call(
        q, k, v, out, lse, dout, dlse.astype(jnp.float32),
        deterministic=bool(cfg.deterministic), **_attrs(cfg),
    )
    return dq, dk, dv


def fwd_fp8(q, k, v, q_descale, k_descale, v_descale, cfg: AttentionConfig):
    """CUDA FP8 forward: float8_e4m3fn q/k/v with float32 descales normalized to
    ``(B, Hq, ceil(Sq/128))``, ``(B, Hk, ceil(Sk/128))`` and ``(B, Hk)``; returns
    ``(out (B, Sq, Hq, Dv) bfloat16, lse f32 (B, Hq, Sq))``."""
    lib = _load()
    b, sq, sk, hq, hk, d, dv = _dims(q, k, v)
    ws = int(lib.jax_flash3_fwd_fp8_workspace_bytes(
        b, sq, sk, hq, hk, d, dv, cfg.window_left, cfg.window_right))
    out_types = (
        jax.ShapeDtypeStruct((b, sq, hq, dv), jnp.bfloat16),
        jax.ShapeDtypeStruct((b, hq, sq), jnp.float32),
        jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8),
    )
    call = jax.ffi.ffi_call(FP8_TARGET, out_types, vmap_method="broadcast_all")
    out, lse, _ = call(
        q, k, v,
        q_descale.astype(jnp.float32), k_descale.astype(jnp.float32), v_descale.astype(jnp.float32),
        exact_lse=np.bool_(cfg.exact_lse),
        **_attrs(cfg),
    )
    return out, lse
