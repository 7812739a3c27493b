"""Shared test switches: the one GPU marker, and helpers to make poisoned outputs."""

import os

import pytest

from cupy_ops import _device


def _gpu_reason():
    if _device.cupy_or_none() is None:
        return "CuPy is not installed"
    if _device.gpu_count() == 0:
        return "no CUDA GPU visible"
    try:
        import torch
    except ImportError:
        return "GPU tests use torch to build inputs; torch is not installed"
    if not torch.cuda.is_available():
        return "torch has no CUDA"
    return None


GPU_SKIP_REASON = _gpu_reason()
requires_gpu = pytest.mark.skipif(GPU_SKIP_REASON is not None,
                                  reason=f"GPU test: {GPU_SKIP_REASON}")


def pytest_configure(config):
    config.addinivalue_line("markers", "large: GPU tests with > 2^31-element tensors (opt-in: -m large)")


def pytest_collection_modifyitems(config, items):
    if "large" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="large-memory test; run with -m large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private kernel cache directory for tests that count compiles."""
    d = tmp_path / "kernel_cache"
    monkeypatch.setenv("CUPY_OPS_CACHE_DIR", str(d))
    return d


def nvrtc_available():
    try:
        from cupy_ops import _runtime
        _runtime.nvrtc_version()
        return True
    except Exception:  # noqa: BLE001
        return False


# On CI the compile tests must run: missing NVRTC there is a broken install step, not a skip.
requires_nvrtc = pytest.mark.skipif(not nvrtc_available() and not os.environ.get("CI"),
                                    reason="NVRTC (cupy-cuda12x + cuda-toolkit[nvrtc,cudart]) not installed")


@pytest.fixture(scope="module")
def torch():
    """torch, imported only by the tests that use it (GPU test modules)."""
    import torch as t
    return t


def precompile(*families, jobs=8):
    """Compile every variant of ``families`` for GPU 0 up front, in parallel, so that GPU test
    timings measure the tests (GPU test modules call it from an autouse module fixture)."""
    from cupy_ops import _device, _runtime
    _runtime.precompile(list(families), _device.arch(0), everything=True, jobs=jobs)
