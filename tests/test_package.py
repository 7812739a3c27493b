"""CPU: the wheel ships cuda_src/, and an installed copy finds it; the package imports and runs
its reference path with neither CuPy nor torch installed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd[:3]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv holding only our wheel, plus NumPy through a .pth (offline, no PyPI)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("pkg")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)])
    (wheel,) = (tmp / "dist").glob("cupy_ops-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The venv has no pip of its own: install the (pure-Python) wheel with ours, into its site.
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
         str(site), str(wheel)])
    numpy_only = tmp / "numpy_only"
    numpy_only.mkdir()
    numpy_dir = Path(numpy.__file__).parent
    for item in [numpy_dir] + list(numpy_dir.parent.glob("numpy.libs")):
        (numpy_only / item.name).symlink_to(item)
    (site / "numpy_only.pth").write_text(str(numpy_only) + "\n")
    return py, wheel


def test_wheel_contains_the_kernel_sources(fresh_venv):
    import zipfile
    _, wheel = fresh_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert "cupy_ops/cuda_src/merge_attn_states.cu" in names
    assert "cupy_ops/cuda_src/common/dtypes.cuh" in names


def test_installed_package_finds_sources_and_runs_without_cupy_or_torch(fresh_venv, tmp_path):
    py, _ = fresh_venv
    script = textwrap.dedent("""
        import importlib.util, sys
        import numpy as np
        import cupy_ops
        from cupy_ops import _runtime
        assert importlib.util.find_spec("cupy") is None and importlib.util.find_spec("torch") is None
        src = _runtime.cuda_src_dir()
        assert str(src).startswith(sys.prefix), (src, sys.prefix)
        assert (src / "merge_attn_states.cu").is_file() and (src / "common" / "vec.cuh").is_file()
        assert cupy_ops.__file__.startswith(sys.prefix), cupy_ops.__file__
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((3, 2, 8)).astype(np.float32), rng.standard_normal((3, 2, 8)).astype(np.float32)
        p, s = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
        out = np.full_like(x, np.nan)
        cupy_ops.merge_attn_states(out, x, p, y, s)
        assert np.isfinite(out).all()

        class DeviceArray:  # looks like a GPU array, but CuPy is missing
            __cuda_array_interface__ = {"shape": (3, 2, 8), "typestr": "<f4", "data": (1 << 30, False), "version": 3}
        try:
            cupy_ops.merge_attn_states(DeviceArray(), x, p, y, s)
        except cupy_ops.NoGPUError as exc:
            assert "CuPy" in str(exc) and "merge_attn_states" in str(exc), exc
        else:
            raise AssertionError("no NoGPUError")
        print("ok")
    """)
    out = run([str(py), "-c", script], cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")})
    assert out.stdout.strip() == "ok"


def test_cli_runs_from_the_installed_package(fresh_venv, tmp_path):
    py, _ = fresh_venv
    out = run([str(py), "-m", "cupy_ops", "selftest"], cwd=tmp_path,
              env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert "numpy-reference" in out.stdout and "all passed" in out.stdout
