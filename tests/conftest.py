"""Test setup: 8 virtual CPU devices for sharding tests, and the `gpu` marker's skip rule."""

import os

# Must happen before JAX initializes its backends (i.e. before the first jax import anywhere).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs an sm_90 GPU and jax_flash3's CUDA library (skipped elsewhere)"
    )


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import jax_flash3

    reason = jax_flash3.cuda_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {reason}")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
