"""`python -m cupy_ops info`: versions, devices, NVRTC, cache location and contents."""

from __future__ import annotations

import platform
import sys

from . import _device, _runtime


def collect() -> dict:
    from . import __version__
    info = {"cupy_ops": __version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "numpy": _version("numpy")}
    info["cupy"] = _version("cupy")
    info["torch"] = _version("torch")
    try:
        info["nvrtc"] = ".".join(map(str, _runtime.nvrtc_version()))
    except Exception as exc:  # noqa: BLE001 - report, don't fail
        info["nvrtc"] = f"unavailable ({type(exc).__name__})"
    info["cuda_headers"] = list(_runtime.cuda_include_dirs())
    info["cuda_src"] = str(_runtime.cuda_src_dir())
    n = _device.gpu_count()
    info["gpus"] = [{"index": i, "name": _device.name(i), "arch": f"sm_{_device.arch(i)}",
                     "sms": _device.sm_count(i)} for i in range(n)]
    cache = _runtime.cache_dir()
    files = list(cache.glob("*.cubin")) if cache.is_dir() else []
    per_op: dict = {}
    for f in files:
        op = f.name.rsplit("-", 1)[0]
        per_op[op] = per_op.get(op, 0) + 1
    info["cache_dir"] = str(cache)
    info["cache_bytes"] = sum(f.stat().st_size for f in files)
    info["cached_variants"] = per_op
    return info


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001
        return None
    return getattr(mod, "__version__", "?")


def print_info() -> None:
    for key, value in collect().items():
        if key == "gpus":
            if not value:
                print(f"{'gpus':16s} none (ops on NumPy/CPU inputs run the reference path)")
            for g in value:
                print(f"{'gpu ' + str(g['index']):16s} {g['name']} {g['arch']} {g['sms']} SMs")
        else:
            print(f"{key:16s} {value}")
