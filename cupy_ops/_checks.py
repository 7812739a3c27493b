"""Argument validation shared by every op.

Every check raises before any launch and names the op, the argument, what was expected and what
was received. vLLM raises ``RuntimeError`` (TORCH_CHECK) for bad input while Python users expect
``ValueError``/``TypeError``; our two classes derive from both so either kind of caller works.

The helpers take array *descriptors* (``cupy_ops._interop.ArrayInfo``) or anything with the same
attributes (``dtype`` as a dtype name string, ``shape``, ``strides`` in elements, ``ptr``,
``itemsize``, ``device``), so the NumPy reference path and the GPU path share them.
"""

from __future__ import annotations

import numbers
import os
from typing import Iterable, Mapping, Sequence


class CupyOpsValueError(ValueError, RuntimeError):
    """A bad value, shape, stride, device or range; also a RuntimeError like vLLM's TORCH_CHECK."""


class CupyOpsTypeError(TypeError, RuntimeError):
    """A bad type or dtype; also a RuntimeError like vLLM's TORCH_CHECK."""


class NoGPUError(RuntimeError):
    """A GPU op was asked for on a machine (or install) where it cannot run."""


def fail(op: str, message: str, *, kind: type = CupyOpsValueError):
    raise kind(f"{op}: {message}")


def check_dtype(op: str, name: str, arr, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if arr.dtype not in allowed:
        fail(op, f"{name}.dtype must be one of {', '.join(allowed)}; got {arr.dtype}",
             kind=CupyOpsTypeError)


def check_same_dtype(op: str, names_and_arrays: Mapping[str, object]) -> None:
    items = list(names_and_arrays.items())
    first_name, first = items[0]
    for name, arr in items[1:]:
        if arr.dtype != first.dtype:
            fail(op, f"{name}.dtype must equal {first_name}.dtype ({first.dtype}); got {arr.dtype}",
                 kind=CupyOpsTypeError)


def check_rank(op: str, name: str, arr, rank: int, dims: str = "") -> None:
    if len(arr.shape) != rank:
        what = f" [{dims}]" if dims else ""
        fail(op, f"{name} must have {rank} dimensions{what}; got shape {tuple(arr.shape)}")


def check_shape(op: str, name: str, arr, expected: Sequence[int | None], dims: str = "") -> None:
    """``expected`` holds one int per dimension, or None where any size is fine."""
    if arr.shape == expected:
        return
    check_rank(op, name, arr, len(expected), dims)
    for got, want in zip(arr.shape, expected):
        if want is not None and got != want:
            shown = tuple("*" if w is None else w for w in expected)
            what = f" [{dims}]" if dims else ""
            fail(op, f"{name}.shape must be {shown}{what}; got {tuple(arr.shape)}")


def check_last_dim_contiguous(op: str, name: str, arr) -> None:
    if arr.shape and arr.shape[-1] > 1 and arr.strides[-1] != 1 and 0 not in arr.shape:
        fail(op, f"{name} must be contiguous in its last dimension (stride 1); "
                 f"got strides {tuple(arr.strides)} (in elements)")


def check_contiguous(op: str, name: str, arr) -> None:
    """Dense row-major (C-contiguous); strides of size-1 dimensions do not matter."""
    expected, acc = [], 1
    for n in reversed(arr.shape):
        expected.append(acc)
        acc *= n
    expected.reverse()
    if 0 in arr.shape:
        return
    if any(n > 1 and st != want for n, st, want in zip(arr.shape, arr.strides, expected)):
        fail(op, f"{name} must be contiguous (dense row-major); got strides {tuple(arr.strides)} "
                 f"(in elements) for shape {tuple(arr.shape)}")


def check_same_device(op: str, names_and_arrays: Mapping[str, object]) -> int | None:
    """All arrays on one device; returns it (None for host arrays)."""
    first_name = first = None
    for name, arr in names_and_arrays.items():
        if arr is None:
            continue
        if first is None:
            first_name, first = name, arr
        elif arr.device != first.device:
            fail(op, f"{name} is on {_where(arr.device)} but {first_name} is on {_where(first.device)}; "
                     "all tensors must be on the same device")
    return first.device


def check_int_range(op: str, name: str, value: int, lo: int, hi: int) -> None:
    if not (lo <= value <= hi):
        fail(op, f"{name} must be in {lo}..{hi}; got {value}")


def check_int(op: str, name: str, value, lo: int, hi: int) -> int:
    """A Python or NumPy integer (not a bool) in lo..hi, returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(op, f"{name} must be an int; got {type(value).__name__}", kind=CupyOpsTypeError)
    value = int(value)
    check_int_range(op, name, value, lo, hi)
    return value


def extent_bytes(arr) -> tuple[int, int]:
    """Half-open byte range [start, end) that the array's elements can touch."""
    lo = hi = 0
    for n, st in zip(arr.shape, arr.strides):
        if n == 0:
            return arr.ptr, arr.ptr
        if st > 0:
            hi += st * (n - 1)
        else:
            lo += st * (n - 1)
    return arr.ptr + lo * arr.itemsize, arr.ptr + (hi + 1) * arr.itemsize


def overlaps(a, b) -> bool:
    a0, a1 = a.extent() if hasattr(a, "extent") else extent_bytes(a)
    b0, b1 = b.extent() if hasattr(b, "extent") else extent_bytes(b)
    return a0 < b1 and b0 < a1


def same_view(a, b) -> bool:
    return (a.ptr == b.ptr and tuple(a.shape) == tuple(b.shape)
            and tuple(a.strides) == tuple(b.strides) and a.dtype == b.dtype)


def check_no_overlap(op: str, out_name: str, out, inputs: Mapping[str, object],
                     allow_identical: bool = False) -> None:
    """``out`` must not share memory with an input, except (if allowed) as the identical view."""
    for name, arr in inputs.items():
        if arr is None or out.device != arr.device:
            continue
        if overlaps(out, arr) and not (allow_identical and same_view(out, arr)):
            extra = " (only an identical view is allowed)" if allow_identical else ""
            fail(op, f"{out_name} overlaps {name} in memory{extra}")


def _where(device: int | None) -> str:
    return "the host (CPU)" if device is None else f"cuda:{device}"


def check_numpy_int32(op: str, name: str, arr) -> None:
    """A NumPy int32 array (the reference implementations' index inputs)."""
    import numpy as np
    if not isinstance(arr, np.ndarray):
        fail(op, f"{name} must be a NumPy int32 array; got {type(arr).__name__}",
             kind=CupyOpsTypeError)
    if arr.dtype != np.int32:
        fail(op, f"{name}.dtype must be int32; got {arr.dtype.name}", kind=CupyOpsTypeError)


# Read on every call (tests and users flip it at run time), on the hot path of every op.
# os.environ.get costs ~1 us (it encodes the key and decodes the value); on POSIX the bytes
# mapping behind os.environ, which putenv-through-os.environ keeps in step, costs ~0.06 us.
_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None
if not isinstance(_ENV_BYTES, dict):
    _ENV_BYTES = None


def _validate_env():
    if _ENV_BYTES is not None:
        return _ENV_BYTES.get(b"CUPY_OPS_VALIDATE", b"")
    return os.environ.get("CUPY_OPS_VALIDATE", "")


def validation_requested(op: str, validate) -> bool:
    """An op's ``validate=`` keyword: None means the CUPY_OPS_VALIDATE environment variable."""
    if validate is None:
        return _validate_env() not in ("", "0", b"", b"0")
    if not isinstance(validate, bool) and type(validate).__name__ != "bool_":
        fail(op, f"validate must be a bool or None; got {type(validate).__name__}",
             kind=CupyOpsTypeError)
    return bool(validate)
