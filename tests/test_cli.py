"""CPU: the command line (info, precompile with a progress bar, selftest, bench's GPU guard)."""

import os
import subprocess
import sys

import pytest

from .conftest import GPU_SKIP_REASON, requires_nvrtc


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cupy_ops", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def test_info_lists_versions_and_cache(tmp_cache):
    out = cli("info")
    assert out.returncode == 0, out.stderr
    for key in ("cupy_ops", "numpy", "nvrtc", "cache_dir", "cuda_src"):
        assert key in out.stdout
    assert str(tmp_cache) in out.stdout


@requires_nvrtc
def test_precompile_fills_the_cache_with_a_progress_bar(tmp_cache):
    out = cli("precompile", "--op", "merge_attn_states", "--arch", "90", "-j", "2")
    assert out.returncode == 0, out.stderr
    assert "precompile sm_90 [" in out.stderr and "3/3" in out.stderr
    assert len(list(tmp_cache.glob("merge_attn_states-*.cubin"))) == 3
    again = cli("info")
    assert "'merge_attn_states': 3" in again.stdout


def test_precompile_rejects_unknown_ops():
    out = cli("precompile", "--op", "nope", "--arch", "90")
    assert out.returncode == 2 and "unknown op" in out.stderr


@pytest.mark.skipif(GPU_SKIP_REASON is None, reason="checks the no-GPU message")
def test_precompile_without_gpu_asks_for_arch():
    out = cli("precompile")
    assert out.returncode == 2 and "--arch" in out.stderr


def test_selftest_passes_on_this_machine():
    out = cli("selftest")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "merge_attn_states" in out.stdout and "all passed" in out.stdout


@pytest.mark.skipif(GPU_SKIP_REASON is None, reason="checks the no-GPU message")
def test_bench_without_gpu_says_so():
    out = cli("bench", "merge_attn_states", "--quick")
    assert out.returncode != 0 and "needs a CUDA GPU" in (out.stdout + out.stderr)


@requires_nvrtc
def test_cache_clear_removes_the_kernels(tmp_cache):
    assert cli("precompile", "--op", "merge_attn_states", "--arch", "90", "-j", "2").returncode == 0
    (tmp_cache / "unrelated.txt").write_text("keep me")
    out = cli("cache", "clear")
    assert out.returncode == 0 and "removed 3 cached kernel files" in out.stdout, out.stdout + out.stderr
    assert not list(tmp_cache.glob("*.cubin")) and (tmp_cache / "unrelated.txt").exists()


def test_errors_are_one_line_unless_debug(tmp_cache):
    out = cli("precompile", "--op", "merge_attn_states", "--arch", "9")
    assert out.returncode == 2
    assert out.stderr.startswith("cupy_ops: error: ") and "Traceback" not in out.stderr, out.stderr
    debug = cli("--debug", "precompile", "--op", "merge_attn_states", "--arch", "9")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bench_header_reports_the_sm_clock(monkeypatch):
    """The clock is cycles spun over the events' time; a fake torch stands in for the GPU."""
    from cupy_ops import _bench

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = FakeEvent.clock

        def elapsed_time(self, other):  # ms
            return other.at - self.at

    class Cuda:
        Event = FakeEvent

        @staticmethod
        def _sleep(cycles):
            FakeEvent.clock += cycles / 1.5e6  # a 1500 MHz card: cycles / (cycles per ms)

        @staticmethod
        def synchronize():
            pass

        @staticmethod
        def get_device_name():
            return "Fake GPU"

    class Torch:
        cuda = Cuda

    monkeypatch.setattr(_bench, "_torch", lambda: Torch)
    assert _bench.sm_clock_mhz() == pytest.approx(1500.0)
    assert _bench.device_line(4261.4) == ("device: Fake GPU  copy ceiling 4261 GB/s (read+write), "
                                          "SM clock 1500 MHz")


def test_top_k_bench_table_has_every_column(monkeypatch):
    """The top-k table printer on a made-up row (the GPU run is the device's job)."""
    import io

    from cupy_ops import _bench_top_k

    monkeypatch.setattr(_bench_top_k, "device_line", lambda gbs: f"device: Fake GPU {gbs:.0f}")
    row = {"case": "decode 128x8192 K2048", "us": 13.1, "warm_us": 11.6, "graph_us": 10.1,
           "torch_topk_us": 78.8, "x_torch": 6.02, "gbs": 320.0, "pct_copy": 7.5, "vllm_us": 12.5,
           "target_us": 10}
    out = io.StringIO()
    _bench_top_k.print_top_k([row], 4261.0, 13.6, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "device: Fake GPU 4261; host time per call 13.6 us"
    assert lines[3].split()[:4] == ["case", "us", "warm", "graph"]
    assert lines[4].split()[3:] == ["13.1", "11.6", "10.1", "78.8", "6.02", "320", "7.5", "12.5", "10"]
