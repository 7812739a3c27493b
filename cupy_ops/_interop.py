"""Zero-copy views of caller arrays, the caller's current stream, and launching in a device context.

Accepted inputs: torch tensors, CuPy arrays, NumPy arrays, and any object exposing
``__cuda_array_interface__`` or ``__dlpack__`` (wrapped as a CuPy array, no copy). Nothing here
copies device memory or synchronises the host. torch and CuPy are imported only if the caller
uses them.
"""

from __future__ import annotations

import sys

import numpy as np

from ._checks import CupyOpsTypeError, CupyOpsValueError, extent_bytes

# C++ spelling of each dtype name, the one map every kernel-name formatter uses.
CPP_TYPES = {
    "float32": "float",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
    "float8_e4m3fn": "__nv_fp8_e4m3",
    "float8_e5m2": "__nv_fp8_e5m2",
    "int32": "int",
    "int64": "long long",
    "uint8": "unsigned char",
}

_TORCH_DTYPES: dict | None = None


def _torch_dtypes() -> dict:
    global _TORCH_DTYPES
    if _TORCH_DTYPES is None:
        import torch
        names = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                 "int64", "int32", "int16", "int8", "uint8", "bool"]
        _TORCH_DTYPES = {getattr(torch, n): n for n in names if hasattr(torch, n)}
    return _TORCH_DTYPES


class ArrayInfo:
    """What a kernel launch needs to know of an array; strides are in elements."""

    __slots__ = ("obj", "framework", "ptr", "dtype", "shape", "strides", "itemsize", "device",
                 "_extent")

    def __init__(self, obj, framework, ptr, dtype, shape, strides, itemsize, device):
        self.obj = obj
        self.framework = framework  # "torch", "cupy" or "numpy"
        self.ptr = ptr
        self.dtype = dtype          # dtype name, e.g. "bfloat16"
        self.shape = shape
        self.strides = strides
        self.itemsize = itemsize
        self.device = device        # CUDA device index, or None for host memory
        self._extent = None

    def extent(self) -> tuple[int, int]:
        """Byte range [start, end) the elements can touch (computed once)."""
        if self._extent is None:
            self._extent = extent_bytes(self)
        return self._extent

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        where = "host" if self.device is None else f"cuda:{self.device}"
        return f"ArrayInfo({self.framework}, {self.dtype}, shape={self.shape}, strides={self.strides}, {where})"


def describe(op: str, name: str, obj) -> ArrayInfo:
    """Zero-copy description of ``obj``; raises a TypeError naming ``name`` for anything else."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _describe_torch(op, name, obj)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(obj, cupy.ndarray):
        return _describe_cupy(op, name, obj)
    if isinstance(obj, np.ndarray):
        return _describe_numpy(op, name, obj)
    if hasattr(obj, "__cuda_array_interface__"):
        from ._device import require_cupy
        return _describe_cupy(op, name, require_cupy(op).asarray(obj))
    if hasattr(obj, "__dlpack__"):
        device_type = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else 1
        if device_type == 1:  # kDLCPU
            return _describe_numpy(op, name, np.from_dlpack(obj))
        from ._device import require_cupy
        return _describe_cupy(op, name, require_cupy(op).from_dlpack(obj))
    raise CupyOpsTypeError(
        f"{op}: {name} must be a torch tensor, CuPy or NumPy array, or an object with "
        f"__dlpack__ / __cuda_array_interface__; got {type(obj).__name__}")


def _describe_torch(op, name, t) -> ArrayInfo:
    dtype = _torch_dtypes().get(t.dtype)
    if dtype is None:
        raise CupyOpsTypeError(f"{op}: {name}.dtype {t.dtype} is not supported")
    if t.is_cuda:
        device = t.get_device()
    elif t.is_cpu:
        device = None
    else:
        raise CupyOpsValueError(f"{op}: {name} is on device {t.device}; expected a CUDA or CPU tensor")
    return ArrayInfo(t, "torch", t.data_ptr(), dtype, tuple(t.shape), t.stride(),
                     t.itemsize, device)


def _elem_strides(op, name, byte_strides, itemsize):
    # Only NumPy/CuPy views can have negative strides; no kernel of ours walks backwards.
    if any(s < 0 for s in byte_strides):
        raise CupyOpsValueError(f"{op}: {name} has a negative stride {byte_strides} (bytes); "
                                "pass a contiguous copy")
    if any(s % itemsize for s in byte_strides):
        raise CupyOpsValueError(f"{op}: {name} has byte strides {byte_strides} that are not "
                                f"multiples of its element size {itemsize}")
    return tuple(s // itemsize for s in byte_strides)


def _describe_cupy(op, name, a) -> ArrayInfo:
    itemsize = a.dtype.itemsize
    return ArrayInfo(a, "cupy", a.data.ptr, a.dtype.name, a.shape,
                     _elem_strides(op, name, a.strides, itemsize), itemsize, a.device.id)


def _describe_numpy(op, name, a) -> ArrayInfo:
    itemsize = a.dtype.itemsize
    return ArrayInfo(a, "numpy", a.__array_interface__["data"][0], a.dtype.name, a.shape,
                     _elem_strides(op, name, a.strides, itemsize), itemsize, None)


def describe_optional(op: str, name: str, obj) -> ArrayInfo | None:
    return None if obj is None else describe(op, name, obj)


# --------------------------------------------------------------------------------------------
# Host (reference) path

def to_numpy(info: ArrayInfo) -> np.ndarray:
    """A NumPy view (or, for dtypes NumPy lacks, an exact float32 copy) of a host array."""
    if info.framework == "numpy":
        return info.obj
    t = info.obj.detach()
    if info.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import torch
        t = t.to(torch.float32)
    return t.numpy()


def host_bytes(info: ArrayInfo) -> np.ndarray:
    """A writable uint8 NumPy view of a host array of 1-byte elements (fp8 bytes: a torch
    float8 / uint8 tensor or a NumPy array)."""
    if info.framework == "torch":
        import torch
        return info.obj.detach().view(torch.uint8).numpy()
    return info.obj.view(np.uint8)


def to_host(info: ArrayInfo) -> np.ndarray:
    """The values of a host or device array as NumPy (device arrays: a synchronous copy)."""
    if info.device is None:
        return to_numpy(info)
    if info.framework == "torch":
        return info.obj.detach().cpu().numpy()
    import cupy
    return cupy.asnumpy(info.obj)


def write_host(info: ArrayInfo, value: np.ndarray) -> None:
    """Store ``value`` into a host array, rounding to its dtype (round to nearest even)."""
    if info.framework == "numpy":
        np.copyto(info.obj, value, casting="unsafe")
        return
    import torch
    info.obj.copy_(torch.from_numpy(np.ascontiguousarray(value)))


class DeviceBuffer:
    """Memory from the caller's framework (torch's caching allocator, so it is also valid
    inside torch graph capture; or CuPy's pool; or NumPy / torch CPU for host arrays):
    ``ptr`` plus the owning object."""

    __slots__ = ("obj", "ptr")

    def __init__(self, obj, ptr):
        self.obj, self.ptr = obj, ptr


def empty_like_framework(like: ArrayInfo, shape: tuple, dtype: str, zero: bool = False) -> DeviceBuffer:
    """An uninitialised (``zero``: zero-filled) array of ``like``'s framework and device (host
    arrays included)."""
    if like.framework == "torch":
        import torch
        device = "cpu" if like.device is None else f"cuda:{like.device}"
        t = (torch.zeros if zero else torch.empty)(shape, dtype=getattr(torch, dtype), device=device)
        return DeviceBuffer(t, t.data_ptr())
    if like.framework == "numpy":
        a = (np.zeros if zero else np.empty)(shape, dtype=dtype)
        return DeviceBuffer(a, a.__array_interface__["data"][0])
    import cupy
    with cupy.cuda.Device(like.device):
        a = (cupy.zeros if zero else cupy.empty)(shape, dtype=dtype)
    return DeviceBuffer(a, a.data.ptr)


# --------------------------------------------------------------------------------------------
# Streams and launches

def current_stream(framework: str, device: int) -> int:
    """The caller's current stream on ``device``: torch's for torch tensors, else CuPy's.

    Read on every call, never cached: ``torch.cuda.graph`` captures on a side stream.
    """
    if framework == "torch":
        torch_c = sys.modules["torch"]._C
        getter = getattr(torch_c, "_cuda_getCurrentRawStream", None)
        if getter is not None:
            return getter(device)
        import torch
        return torch.cuda.current_stream(device).cuda_stream
    import cupy
    with cupy.cuda.Device(device):
        return cupy.cuda.get_current_stream().ptr


_PARAM_FORMATS = {"ptr": "u8", "i64": "i8", "i32": "i4", "u32": "u4", "f32": "f4"}


class KernelParams:
    """A kernel's parameter list, packed once for cuLaunchKernel.

    ``types`` lists the kernel's parameters in order ("ptr", "i64", "i32", "u32", "f32"): the
    fixed-width C types of the signature, so a Python int can never be passed with the wrong
    width. ``pack`` lays the values out once (natural alignment, as the C ABI does); a launch
    plan keeps the packed block and replays it, so a cached call pays no argument marshalling
    (CuPy's generic kernel call re-marshals every argument on every launch).
    """

    def __init__(self, types):
        self.types = tuple(types)
        formats = [_PARAM_FORMATS[t] for t in self.types]
        self.dtype = np.dtype({"names": [f"a{i}" for i in range(len(formats))],
                               "formats": formats}, align=True)
        self.offsets = tuple(self.dtype.fields[f"a{i}"][1] for i in range(len(formats)))

    def pack(self, values: tuple) -> "PackedArgs":
        if len(values) != len(self.types):
            raise TypeError(f"kernel takes {len(self.types)} parameters; got {len(values)}")
        return PackedArgs(self, values)


class PackedArgs:
    """Packed parameter values and the array of pointers to them that cuLaunchKernel reads."""

    __slots__ = ("values", "pointers", "address")

    def __init__(self, params: KernelParams, values: tuple):
        self.values = np.zeros(1, params.dtype)
        self.values[0] = values
        base = self.values.ctypes.data
        self.pointers = np.array([base + off for off in params.offsets], dtype=np.uint64)
        self.address = self.pointers.ctypes.data


def _launch(func_ptr: int, device: int, stream_ptr: int, dims: tuple, shared_mem: int,
            params_address: int) -> None:
    driver, runtime = _cuda_api()
    if runtime.getDevice() != device:
        # Kernels belong to the context they were loaded in.
        with _device_context(device):
            driver.launchKernel(func_ptr, *dims, shared_mem, stream_ptr, params_address, 0)
        return
    driver.launchKernel(func_ptr, *dims, shared_mem, stream_ptr, params_address, 0)


_CUDA_API = None


def _cuda_api():
    global _CUDA_API
    if _CUDA_API is None:
        from cupy.cuda import runtime
        from cupy_backends.cuda.api import driver
        _CUDA_API = (driver, runtime)
    return _CUDA_API


def _device_context(device: int):
    import cupy
    return cupy.cuda.Device(device)


# --------------------------------------------------------------------------------------------
# Launch plans: a validated call, replayed while the arguments' metadata is unchanged

def fingerprint(objs, extra=()):
    """Hashable metadata of GPU arguments (pointer, shape, strides, dtype, device), or None.

    Everything an op's validation, variant choice and launch geometry read is in here, so two
    calls with equal fingerprints validate identically and can share one launch plan. Host
    arrays and unknown array types return None (no plan caching: they take the full path).
    """
    torch = sys.modules.get("torch")
    tensor_type = torch.Tensor if torch is not None else None
    parts = []
    for o in objs:
        if o is None:
            parts.append(None)
        elif tensor_type is not None and isinstance(o, tensor_type):
            if not o.is_cuda:
                return None
            # No device index: CUDA's unified addressing gives every device allocation of a
            # process its own address range, so the pointer already tells the device.
            parts.append((o.data_ptr(), o.shape, o.stride(), o.dtype))
        else:
            cupy = sys.modules.get("cupy")
            if cupy is None or not isinstance(o, cupy.ndarray):
                return None
            parts.append((o.data.ptr, o.shape, o.strides, o.dtype, o.device.id))
    return (tuple(parts), extra)


def planned(plans: "PlanCache", arrays, scalars: tuple, build, cached: bool = True):
    """The launch plan of a call, from ``plans`` or built by ``build()`` and remembered.

    Keyed by the arrays' fingerprint and the scalars *with their types*, so that a call with
    ``2.0`` (or ``causal=1``) never reuses the plan built for ``2`` (``True``) and so skips the
    type check that would reject it. ``cached=False`` (value validation on) always builds.
    """
    key = fingerprint(arrays, (scalars, tuple(map(type, scalars)))) if cached else None
    plan = plans.get(key)
    if plan is None:
        plan = build()
        plans.put(key, plan)
    return plan


class LaunchPlan:
    """One kernel launch with every argument fixed except the stream, read at each run."""

    # Holds plain numbers only, never the caller's arrays: a cached plan must not keep memory alive.
    __slots__ = ("kernel", "func_ptr", "framework", "device", "dims", "args", "shared_mem")

    def __init__(self, params: KernelParams, kernel, stream_of: ArrayInfo, grid, block, values,
                 shared_mem=0):
        self.kernel, self.func_ptr = kernel, kernel.ptr
        self.framework, self.device = stream_of.framework, stream_of.device
        self.dims = (tuple(grid) + (1, 1))[:3] + (tuple(block) + (1, 1))[:3]
        self.shared_mem = shared_mem
        self.args = params.pack(values)

    def run(self) -> None:
        self.run_on(current_stream(self.framework, self.device))

    def run_on(self, stream_ptr: int) -> None:
        _launch(self.func_ptr, self.device, stream_ptr, self.dims, self.shared_mem, self.args.address)


class SequencePlan:
    """Several launches in order on one stream (e.g. a split kernel and its reduce)."""

    __slots__ = ("launches", "keep_alive", "framework", "device")

    def __init__(self, launches, keep_alive=None):
        self.launches = tuple(launches)
        self.keep_alive = keep_alive  # a workspace the launches write (owned by the plan)
        first = self.launches[0]
        self.framework, self.device = first.framework, first.device

    def run(self) -> None:
        stream = current_stream(self.framework, self.device)  # read once: all on one stream
        for launch in self.launches:
            launch.run_on(stream)


class HostPlan:
    """A call on host arrays: runs ``fn(*args, *run_args)`` (the op's NumPy reference). Never
    cached by the ops: host arrays have no fingerprint, and the reference reads the values."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def run(self, *run_args):
        return self.fn(*self.args, *run_args)


def host_scalar(info: ArrayInfo | None, default: float = 1.0) -> float:
    """The first element of a host array as a float (fp8 scale tensors); ``default`` for None."""
    return default if info is None else float(to_numpy(info).reshape(-1)[0])


class NoOpPlan:
    """A validated call with nothing to compute (an empty dimension)."""

    __slots__ = ()

    def run(self) -> None:
        return None


class PlanCache:
    """Bounded map fingerprint -> plan; dict operations are atomic under the GIL."""

    def __init__(self, maxsize: int = 1024):
        self.maxsize = maxsize
        self._plans: dict = {}

    def get(self, key):
        if key is None:
            return None
        try:
            return self._plans.get(key)
        except TypeError:  # an unhashable scalar argument: validation will name it
            return None

    def put(self, key, plan) -> None:
        if key is None:
            return
        if len(self._plans) >= self.maxsize:
            self._plans.clear()
        try:
            self._plans[key] = plan
        except TypeError:
            pass

    def clear(self) -> None:
        self._plans.clear()
