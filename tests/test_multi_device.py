"""CPU: the device-selection logic with mocked device queries (issue #8).

Only single-GPU machines are lent to this project so far, so the multi-GPU paths are checked here
with fakes for the device layer: one module per (device, variant) loaded in that device's
context, one compile shared through the disk cache, launches switched into the kernel's device
context, mixed-device arguments rejected before launch.
"""

import contextlib
import types

import numpy as np
import pytest

from cupy_ops import _checks, _device, _interop, _runtime
from cupy_ops.ops import merge_attn_states as merge_op

from .conftest import requires_nvrtc


@requires_nvrtc
def test_one_module_per_device_one_compile(tmp_cache, monkeypatch):
    loads = []
    monkeypatch.setattr(_runtime, "_modules", {})
    monkeypatch.setattr(_device, "capturing", lambda device: False)
    monkeypatch.setattr(_device, "arch", lambda device: 90)
    monkeypatch.setattr(_device, "load_function",
                        lambda device, binary, symbol: loads.append((device, symbol)) or
                        types.SimpleNamespace(ptr=100 + device))
    variant = merge_op.FAMILY.common[0]
    compiled, hits = _runtime.stats.compiled, _runtime.stats.disk_hits
    fns = [_runtime.get_kernel(merge_op.FAMILY, variant, d) for d in (0, 1, 3, 1, 0)]
    assert [f.ptr for f in fns] == [100, 101, 103, 101, 100]   # per device, then cached
    assert [d for d, _ in loads] == [0, 1, 3]                  # each loaded in its own device
    assert len({s for _, s in loads}) == 1
    assert _runtime.stats.compiled - compiled == 1             # compiled once; the other devices
    assert _runtime.stats.disk_hits - hits == 2                #   load it from the disk cache
    keys = {k for k in _runtime._modules if k[1] == merge_op.FAMILY.op}
    assert keys == {(d, merge_op.FAMILY.op, variant) for d in (0, 1, 3)}


class _FakeDriver:
    def __init__(self, log, current):
        self.log, self.current = log, current

    def launchKernel(self, *args):  # noqa: N802 - the driver binding's name
        self.log.append(("launch", self.current[0]))


def test_launch_runs_in_the_kernels_device_context(monkeypatch):
    log, current = [], [0]

    @contextlib.contextmanager
    def device_context(device):
        before = current[0]
        current[0] = device
        log.append(("enter", device))
        yield
        current[0] = before

    runtime = types.SimpleNamespace(getDevice=lambda: current[0])
    monkeypatch.setattr(_interop, "_cuda_api", lambda: (_FakeDriver(log, current), runtime))
    monkeypatch.setattr(_interop, "_device_context", device_context)
    _interop._launch(1, 2, 0, (1, 1, 1, 32, 1, 1), 0, 0)    # kernel of cuda:2, caller on cuda:0
    _interop._launch(1, 0, 0, (1, 1, 1, 32, 1, 1), 0, 0)    # same device: no switch
    assert log == [("enter", 2), ("launch", 2), ("launch", 0)]
    assert current[0] == 0                                   # caller's device restored


def _info(device, shape=(2, 3, 8)):
    a = np.zeros(shape, np.float32)
    return _interop.ArrayInfo(a, "cupy", 4096 * (1 + (device or 0)), "float32", shape, a.strides,
                              4, device)


def test_arguments_on_different_devices_are_rejected_with_both_names():
    with pytest.raises(_checks.CupyOpsValueError, match="prefix_output is on cuda:1 but output is on cuda:0"):
        _checks.check_same_device("merge_attn_states", {"output": _info(0), "prefix_output": _info(1)})
    with pytest.raises(_checks.CupyOpsValueError, match="the host"):
        _checks.check_same_device("merge_attn_states", {"output": _info(0), "x": _info(None)})
    assert _checks.check_same_device("op", {"a": _info(3), "b": None, "c": _info(3)}) == 3
