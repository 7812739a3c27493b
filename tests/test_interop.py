"""CPU: array descriptions from every accepted kind of input, and kernel parameter packing."""

import numpy as np
import pytest

from cupy_ops import CupyOpsTypeError, CupyOpsValueError, _checks, _interop


def test_numpy_description_is_zero_copy_with_element_strides():
    a = np.zeros((4, 6, 8), np.float16)[:, 1:5, ::1]
    info = _interop.describe("op", "a", a)
    assert info.framework == "numpy" and info.device is None
    assert info.ptr == a.__array_interface__["data"][0]
    assert info.shape == (4, 4, 8) and info.strides == (48, 8, 1) and info.itemsize == 2
    assert info.dtype == "float16"


def test_torch_cpu_description():
    torch = pytest.importorskip("torch")
    t = torch.empty(3, 5, dtype=torch.bfloat16).t()
    info = _interop.describe("op", "t", t)
    assert (info.framework, info.dtype, info.shape, info.strides) == ("torch", "bfloat16", (5, 3), (1, 5))
    assert info.ptr == t.data_ptr() and info.device is None


def test_dlpack_host_object_is_accepted():
    class OnlyDLPack:
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kw):
            return self._a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    info = _interop.describe("op", "x", OnlyDLPack(a))
    assert info.ptr == a.__array_interface__["data"][0] and info.shape == (3, 4)


def test_unknown_objects_raise_type_error_naming_the_argument():
    with pytest.raises(CupyOpsTypeError, match="op: weights must be a torch tensor"):
        _interop.describe("op", "weights", [1.0, 2.0])


def test_negative_strides_are_rejected():
    with pytest.raises(CupyOpsValueError, match="x has a negative stride"):
        _interop.describe("op", "x", np.arange(5.0)[::-1])


def test_extent_and_overlap():
    buf = np.zeros((10, 8), np.float32)
    a = _interop.describe("op", "a", buf[:5])
    b = _interop.describe("op", "b", buf[5:])
    c = _interop.describe("op", "c", buf[4:6])
    assert not _checks.overlaps(a, b)
    assert _checks.overlaps(a, c) and _checks.overlaps(b, c)
    assert a.extent() == (a.ptr, a.ptr + 5 * 8 * 4)


def test_kernel_params_pack_each_value_at_its_aligned_offset():
    params = _interop.KernelParams(("ptr", "i32", "i64", "i32", "f32", "ptr"))
    values = (0x7F0000001234, -5, -(2**40), 2**31 - 1, 1.5, 0)
    packed = params.pack(values)
    raw = packed.values.tobytes()
    offsets = [int(p) - packed.values.ctypes.data for p in packed.pointers]
    assert offsets == [0, 8, 16, 24, 28, 32]  # natural alignment, like the C ABI
    assert packed.address == packed.pointers.ctypes.data
    assert int.from_bytes(raw[0:8], "little") == values[0]
    assert int.from_bytes(raw[8:12], "little", signed=True) == -5
    assert int.from_bytes(raw[16:24], "little", signed=True) == -(2**40)
    assert int.from_bytes(raw[24:28], "little", signed=True) == 2**31 - 1
    assert np.frombuffer(raw[28:32], np.float32)[0] == 1.5


def test_kernel_params_reject_a_wrong_argument_count():
    params = _interop.KernelParams(("ptr", "i32"))
    with pytest.raises(TypeError, match="takes 2 parameters"):
        params.pack((1,))


def test_kernel_params_reject_values_that_do_not_fit():
    params = _interop.KernelParams(("i32",))
    with pytest.raises((OverflowError, ValueError)):
        params.pack((2**31,))


def test_fingerprint_is_none_for_host_arrays():
    assert _interop.fingerprint((np.zeros(3),)) is None
    torch = pytest.importorskip("torch")
    assert _interop.fingerprint((torch.zeros(3),)) is None


def test_plan_cache_tolerates_unhashable_keys():
    cache = _interop.PlanCache()
    key = ((1, [2]), ())
    assert cache.get(key) is None
    cache.put(key, object())
    assert cache.get(((1, 2), ())) is None
    cache.put(((1, 2), ()), "plan")
    assert cache.get(((1, 2), ())) == "plan"


def test_planned_keys_scalars_with_their_types():
    """A call with 2.0 (or causal=1) must not reuse the plan validated for 2 (or True)."""
    from cupy_ops import _interop
    plans, built = _interop.PlanCache(), []

    def build(tag):
        built.append(tag)
        return tag

    assert _interop.planned(plans, (), (2, True), lambda: build("int")) == "int"
    assert _interop.planned(plans, (), (2, True), lambda: build("again")) == "int"   # cached
    assert _interop.planned(plans, (), (2.0, True), lambda: build("float")) == "float"
    assert _interop.planned(plans, (), (2, 1), lambda: build("one")) == "one"
    assert _interop.planned(plans, (), (2, True), lambda: build("nocache"), cached=False) == "nocache"
    assert built == ["int", "float", "one", "nocache"]
