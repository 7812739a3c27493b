"""Compile kernels with NVRTC, cache the binaries on disk, load them once per device.

One path for every op:

    KernelFamily + Variant --name_expression--> NVRTC (one program per variant) --> cubin
        --> disk cache (key: source tree hash, name expression, options, NVRTC version)
        --> per-device module cache in memory --> cupy.cuda.function.Function

We call NVRTC directly (``cupy_backends.cuda.libs.nvrtc``) rather than through
``cupy.RawModule(code=...)`` because (a) the same function then runs on a machine with no GPU or
driver, so CI compiles exactly what users load; (b) we control the cache key (CuPy 14.1 missed its
disk cache for multi-argument templates, cupy/cupy#10173) and the -arch flag; (c) cache files are
written atomically and verified by checksum, so a corrupt or concurrently written file is detected
and rebuilt. Loading uses CuPy's module object (``cupy.cuda.function.Module``) in the device's
context, so CuPy's launch path is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

CACHE_FORMAT = b"CUPYOPS-CUBIN-1\n"


# --------------------------------------------------------------------------------------------
# Kernel families and variants

@dataclasses.dataclass(frozen=True)
class KernelFamily:
    """A templated kernel in one .cu file, with the table of variants the dispatcher may pick."""

    op: str                      # e.g. "merge_attn_states"
    source: str                  # file under cuda_src/
    template: str                # fully qualified template name
    variants: tuple              # every Variant the dispatcher can choose (the table)
    common: tuple                # what `precompile` builds by default

    def __post_init__(self):
        object.__setattr__(self, "_variant_set", frozenset(self.variants))
        missing = [v for v in self.common if v not in self._variant_set]
        if missing:
            raise ValueError(f"{self.op}: common variants not in the table: {missing}")

    def name_expression(self, variant) -> str:
        # One formatter, fixed spacing: the disk-cache key depends on this exact string.
        return f"{self.template}<{', '.join(variant.template_args())}>"

    def contains(self, variant) -> bool:
        return variant in self._variant_set


class CompileError(RuntimeError):
    """NVRTC rejected a kernel; the message holds the instantiation, options and NVRTC log."""


# --------------------------------------------------------------------------------------------
# Sources and compile options

def cuda_src_dir() -> Path:
    """Kernel sources: shipped inside the package (wheel), or the repository's cuda_src/."""
    packaged = Path(__file__).resolve().parent / "cuda_src"
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parent.parent / "cuda_src"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(f"cupy_ops: kernel sources not found in {packaged} or {repo}")


@lru_cache(maxsize=None)
def _source_tree_hash() -> str:
    """Hash of every file under cuda_src/: a changed header invalidates every cached kernel."""
    root = cuda_src_dir()
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".cu", ".cuh")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def read_source(name: str) -> str:
    return (cuda_src_dir() / name).read_text()


@lru_cache(maxsize=None)
def cuda_include_dirs() -> tuple[str, ...]:
    """Directories holding cuda_fp16.h and friends, from the NVIDIA wheels or CUDA_PATH."""
    dirs: list[str] = []
    try:
        import cuda.pathfinder as pathfinder  # ships with CuPy 14 / cuda-toolkit wheels
        for lib in ("cudart", "nvrtc"):
            try:
                found = pathfinder.find_nvidia_header_directory(lib)
            except Exception:  # noqa: BLE001 - pathfinder raises several kinds of "not found"
                found = None
            if found and found not in dirs:
                dirs.append(found)
    except ImportError:
        pass
    for env in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(env)
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            dirs.append(os.path.join(root, "include"))
    if not any(os.path.isfile(os.path.join(d, "cuda_fp16.h")) for d in dirs):
        for root in ("/usr/local/cuda/include",):
            if os.path.isfile(os.path.join(root, "cuda_fp16.h")):
                dirs.append(root)
    return tuple(dirs)


@lru_cache(maxsize=None)
def nvrtc_version() -> tuple[int, int]:
    from cupy_backends.cuda.libs import nvrtc
    return tuple(nvrtc.getVersion())


@lru_cache(maxsize=None)
def target_for_arch(arch: int) -> str:
    """`sm_XY` when NVRTC knows the arch (a cubin); else PTX for the newest arch it knows."""
    from cupy_backends.cuda.libs import nvrtc
    supported = tuple(nvrtc.getSupportedArchs())
    if arch in supported:
        return f"sm_{arch}"
    older = [a for a in supported if a <= arch]
    if not older:
        raise CompileError(f"NVRTC {nvrtc_version()} cannot target compute capability {arch}")
    return f"compute_{max(older)}"


EXPERIMENT_PREFIX = "CUPY_OPS_EXP_"


def experiment_defines() -> tuple[str, ...]:
    """Kernel experiment switches to compile every kernel with, from CUPY_OPS_EXPERIMENT_DEFINES
    (comma- or space-separated macro names starting with CUPY_OPS_EXP_): for running the GPU tests
    and the sanitizers on an experimental code path (docs/perf.md) before it becomes the default.
    They are compile options, hence part of the disk-cache key. Developers only."""
    names = os.environ.get("CUPY_OPS_EXPERIMENT_DEFINES", "").replace(",", " ").split()
    for name in names:
        if not name.startswith(EXPERIMENT_PREFIX) or not name.replace("_", "").isalnum():
            raise ValueError(f"CUPY_OPS_EXPERIMENT_DEFINES: {name!r} is not a macro name starting "
                             f"with {EXPERIMENT_PREFIX}")
    return tuple(sorted(set(names)))


def compile_options(arch: int) -> tuple[str, ...]:
    options = ["--std=c++17", f"-arch={target_for_arch(arch)}", f"-I{cuda_src_dir()}"]
    options += [f"-I{d}" for d in cuda_include_dirs()]
    options += [f"-D{name}" for name in experiment_defines()]
    return tuple(options)


# --------------------------------------------------------------------------------------------
# NVRTC

@dataclasses.dataclass(frozen=True)
class Compiled:
    binary: bytes                     # cubin, or PTX when the arch is newer than NVRTC knows
    lowered_names: dict               # name expression -> mangled symbol


def nvrtc_compile(source: str, name_expressions: Sequence[str], options: Sequence[str],
                  program_name: str = "cupy_ops.cu") -> Compiled:
    """Compile one NVRTC program; works without a GPU or driver."""
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(source, program_name, [], [])
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            shown = "\n  ".join(name_expressions[:8]) + ("\n  ..." if len(name_expressions) > 8 else "")
            raise CompileError(
                f"NVRTC failed to compile {program_name} ({exc})\n"
                f"instantiations:\n  {shown}\noptions: {' '.join(options)}\nlog:\n{log}\n"
                "Set CUPY_OPS_DUMP_SOURCE=1 to write the source next to the cache.") from None
        lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in name_expressions}
        is_cubin = any(o.startswith("-arch=sm_") for o in options)
        binary = nvrtc.getCUBIN(prog) if is_cubin else nvrtc.getPTX(prog)
        if isinstance(binary, str):
            binary = binary.encode()
        return Compiled(bytes(binary), lowered)
    finally:
        nvrtc.destroyProgram(prog)


# --------------------------------------------------------------------------------------------
# Disk cache

def cache_dir() -> Path:
    env = os.environ.get("CUPY_OPS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cupy_ops" / "kernels"


def cache_key(name_expression: str, options: Sequence[str]) -> str:
    # Include-path options name install locations, not content: leave them out of the key so a
    # moved venv still hits, but keep the NVRTC version, which decides the binary.
    meaningful = [o for o in options if not o.startswith("-I")]
    ident = json.dumps([CACHE_FORMAT.decode(), _source_tree_hash(), name_expression, meaningful,
                        list(nvrtc_version())])
    return hashlib.sha256(ident.encode()).hexdigest()[:40]


_warned_read_only = False


def _read_cached(path: Path, name_expression: str) -> Compiled | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if not blob.startswith(CACHE_FORMAT):
        return None
    rest = blob[len(CACHE_FORMAT):]
    digest, payload = rest[:32], rest[32:]
    if hashlib.sha256(payload).digest() != digest:
        return None  # truncated or corrupt: recompile and overwrite
    try:
        header_len = int.from_bytes(payload[:4], "little")
        header = json.loads(payload[4:4 + header_len])
        binary = payload[4 + header_len:]
    except (ValueError, UnicodeDecodeError):
        return None
    if header.get("expr") != name_expression:
        return None
    return Compiled(binary, {name_expression: header["lowered"]})


def _write_cached(path: Path, name_expression: str, compiled: Compiled) -> None:
    global _warned_read_only
    header = json.dumps({"expr": name_expression,
                         "lowered": compiled.lowered_names[name_expression]}).encode()
    payload = len(header).to_bytes(4, "little") + header + compiled.binary
    blob = CACHE_FORMAT + hashlib.sha256(payload).digest() + payload
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cubin")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        if not _warned_read_only:
            _warned_read_only = True
            warnings.warn(f"cupy_ops: kernel cache {path.parent} is not writable ({exc}); "
                          "compiled kernels are kept in memory only. Set CUPY_OPS_CACHE_DIR.",
                          RuntimeWarning, stacklevel=3)


@dataclasses.dataclass
class CompileStats:
    compiled: int = 0     # NVRTC runs
    disk_hits: int = 0
    loads: int = 0        # modules loaded onto a device


stats = CompileStats()


def build_variant(family: KernelFamily, variant, arch: int) -> Compiled:
    """Binary for one variant: from the disk cache, else NVRTC (then cached)."""
    if not family.contains(variant):
        raise ValueError(f"{family.op}: variant {variant} is not in the kernel table")
    expr, options, path = _cache_entry(family, variant, arch)
    cached = _read_cached(path, expr)
    if cached is not None:
        stats.disk_hits += 1
        return cached
    source = read_source(family.source)
    if os.environ.get("CUPY_OPS_DUMP_SOURCE"):
        _dump_source(path, source, expr, options)
    compiled = nvrtc_compile(source, [expr], options, program_name=family.source)
    stats.compiled += 1
    _write_cached(path, expr, compiled)
    return compiled


def _cache_entry(family: KernelFamily, variant, arch: int) -> tuple[str, tuple, Path]:
    """A variant's name expression, compile options and disk-cache file."""
    expr = family.name_expression(variant)
    options = compile_options(arch)
    return expr, options, cache_dir() / f"{family.op}-{cache_key(expr, options)}.cubin"


def _dump_source(path: Path, source: str, expr: str, options: Sequence[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".cu").write_text(f"// {expr}\n// {' '.join(options)}\n{source}")
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Per-device modules

_modules: dict = {}
_lock = threading.Lock()


def get_kernel(family: KernelFamily, variant, device: int):
    """The loaded kernel for ``variant`` on ``device`` (compiling/loading on first use)."""
    key = (device, family.op, variant)
    fn = _modules.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _modules.get(key)
        if fn is None:
            from . import _device
            if _device.capturing(device):
                # Loading a module is not a stream operation CUDA allows during capture.
                raise RuntimeError(
                    f"{family.op}: kernel {family.name_expression(variant)} is not loaded on "
                    f"cuda:{device} and the current stream is capturing a CUDA graph; run the op "
                    "once with the same dtypes before capturing (compiled kernels come from the "
                    "disk cache, see `python -m cupy_ops precompile`)")
            compiled = build_variant(family, variant, _device.arch(device))
            fn = _device.load_function(device, compiled.binary,
                                       compiled.lowered_names[family.name_expression(variant)])
            stats.loads += 1
            _modules[key] = fn
    return fn


def loaded_variants() -> list[tuple[int, str, object]]:
    return sorted(_modules, key=repr)


def precompile(families: Iterable[KernelFamily], arch: int, *, everything: bool = False,
               jobs: int = 1, progress=None) -> int:
    """Fill the disk cache for ``arch``; returns the number of variants handled."""
    work = [(fam, v) for fam in families for v in (fam.variants if everything else fam.common)]
    if jobs <= 1:
        for fam, v in work:
            build_variant(fam, v, arch)
            if progress:
                progress(fam, v)
        return len(work)
    # Cached variants are not sent to workers (a corrupt file is still caught when loaded).
    cached = [_cache_entry(fam, v, arch)[2].exists() for fam, v in work]
    done = [item for item, hit in zip(work, cached) if hit]
    work = [item for item, hit in zip(work, cached) if not hit]
    for fam, v in done:
        if progress:
            progress(fam, v)
    if not work:
        return len(done)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    # spawn, not fork: callers (tests, notebooks) often have CUDA and torch threads running, and
    # a forked child of a multi-threaded process can deadlock on a lock held by another thread.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [(fam, v, pool.submit(_build_in_worker, fam.op, v, arch)) for fam, v in work]
        for fam, v, fut in futures:
            fut.result()
            if progress:
                progress(fam, v)
    return len(done) + len(work)


def _build_in_worker(op: str, variant, arch: int) -> None:
    from .ops import FAMILIES
    build_variant(FAMILIES[op], variant, arch)
