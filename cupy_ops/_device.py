"""GPU facts and module loading, queried once per device. Imports CuPy lazily."""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

from ._checks import NoGPUError


@lru_cache(maxsize=None)
def cupy_or_none():
    try:
        import cupy
    except Exception:  # noqa: BLE001 - a broken CuPy install is the same as none for us
        return None
    return cupy


def gpu_count() -> int:
    cupy = cupy_or_none()
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no driver / no device
        return 0


def require_cupy(op: str):
    cupy = cupy_or_none()
    if cupy is None:
        raise NoGPUError(
            f"{op}: GPU inputs need CuPy, which is not installed or failed to import. Install "
            "cupy-ops[cuda12] or cupy-ops[cuda13]; NumPy inputs run the CPU reference path.")
    return cupy


@lru_cache(maxsize=None)
def properties(device: int) -> dict:
    cupy = require_cupy("cupy_ops")
    return cupy.cuda.runtime.getDeviceProperties(device)


def max_dynamic_smem(device: int) -> int:
    """Shared memory one block may use after opting in (227 KB on H100)."""
    p = properties(device)
    return p.get("sharedMemPerBlockOptin", p["sharedMemPerBlock"])


def arch(device: int) -> int:
    p = properties(device)
    return p["major"] * 10 + p["minor"]


def sm_count(device: int) -> int:
    return properties(device)["multiProcessorCount"]


def name(device: int) -> str:
    n = properties(device)["name"]
    return n.decode() if isinstance(n, bytes) else n


_loaded_modules: list = []


def load_function(device: int, binary: bytes, symbol: str):
    """Load a cubin/PTX into ``device``'s context (never implicitly GPU 0) and get one kernel."""
    cupy = require_cupy("cupy_ops")
    from cupy.cuda import function
    from cupy_backends.cuda.api import driver
    with cupy.cuda.Device(device):
        module = function.Module()
        module.load(binary)
        fn = module.get_function(symbol)
        # Kernels may use all the dynamic shared memory the device allows (over 48 KB needs
        # this opt-in); launch geometry decides how much each launch takes.
        static = driver.funcGetAttribute(driver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn.ptr)
        driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                max_dynamic_smem(device) - static)
    # Modules live as long as the process, like their functions. Deliberately never freed: at
    # interpreter teardown a module's __dealloc__ would run after CuPy's driver bindings are
    # gone and print a TypeError per module; the driver releases them with the context.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(module))
    _loaded_modules.append(module)
    return fn


def resident_blocks(kernel, threads: int, smem: int) -> int:
    """CTAs of ``kernel`` one SM holds at once (registers, shared memory, threads)."""
    from cupy_backends.cuda.api import driver
    return max(1, driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.ptr, threads, smem))


def capturing(device: int) -> bool:
    """Whether the caller's current stream on ``device`` is capturing a CUDA graph: torch's
    (when torch has initialised CUDA) or CuPy's (a non-default stream)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with torch.cuda.device(device):
            if torch.cuda.is_current_stream_capturing():
                return True
    cupy = cupy_or_none()
    if cupy is not None:
        with cupy.cuda.Device(device):
            stream = cupy.cuda.get_current_stream()
            # The legacy default stream cannot capture (and may not be queried during a capture).
            return stream.ptr != 0 and stream.is_capturing()
    return False
