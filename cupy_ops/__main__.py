"""Command line: info, precompile, selftest, bench, cache clear.

    python -m cupy_ops info
    python -m cupy_ops precompile [--op OP ...] [--arch 90] [--all] [-j N]
    python -m cupy_ops selftest
    python -m cupy_ops bench {merge_attn_states,paged_attention,top_k_per_row,vertical_slash} [--quick] [--json PATH] [--plot PNG]
    python -m cupy_ops cache clear

Errors print one line (``cupy_ops: error: ...``) and exit with status 2; ``--debug`` (before the
command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cupy_ops")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPUs, NVRTC, kernel cache")
    pre = sub.add_parser("precompile", help="compile kernel variants into the disk cache")
    pre.add_argument("--op", action="append", help="op family (repeatable); default: all")
    pre.add_argument("--arch", type=int, help="compute capability, e.g. 90 (default: GPU 0's); "
                                              "no GPU needed when given")
    pre.add_argument("--all", action="store_true", help="every variant in the tables, not only the common ones")
    pre.add_argument("-j", "--jobs", type=int, default=min(8, os.cpu_count() or 1))
    sub.add_parser("selftest", help="run every op on a small example and check it against the reference")
    bench = sub.add_parser("bench", help="time an op against baselines measured in the same run (GPU)")
    bench.add_argument("op", choices=["merge_attn_states", "paged_attention", "top_k_per_row",
                                      "vertical_slash"])
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    bench.add_argument("--json", help="also write the numbers to this file")
    bench.add_argument("--plot", help="also draw them into this PNG (needs matplotlib)")
    cache = sub.add_parser("cache", help="the kernel cache on disk")
    cache.add_argument("action", choices=["clear"], help="clear: delete every cached kernel")
    args = parser.parse_args(argv)
    if args.debug:
        return _run(args)
    try:
        return _run(args)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:  # our errors derive from these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cupy_ops: error: {first} (--debug for the traceback)", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "cache":
        return _cache_clear()
    if args.command == "info":
        from ._info import print_info
        print_info()
        return 0
    if args.command == "precompile":
        return _precompile(args)
    if args.command == "selftest":
        from ._selftest import run_selftest
        return run_selftest()
    if args.command == "bench":
        from ._bench import run_bench
        return run_bench(args.op, quick=args.quick, json_path=args.json, plot_path=args.plot)
    return 2


def _cache_clear() -> int:
    from . import _runtime
    root = _runtime.cache_dir()
    files = [p for p in root.glob("*") if p.is_file() and p.suffix in (".cubin", ".cu")]
    freed = sum(p.stat().st_size for p in files)
    for p in files:
        p.unlink()
    print(f"removed {len(files)} cached kernel files ({freed / 2**20:.1f} MiB) from {root}")
    return 0


def _precompile(args) -> int:
    from . import _device, _runtime
    from ._progress import ProgressBar
    from .ops import FAMILIES
    names = args.op or sorted(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"unknown op(s): {', '.join(unknown)}; known: {', '.join(sorted(FAMILIES))}", file=sys.stderr)
        return 2
    if args.arch is None:
        if _device.gpu_count() == 0:
            print("no GPU visible: pass --arch (e.g. --arch 90) to compile for a card elsewhere", file=sys.stderr)
            return 2
        args.arch = _device.arch(0)
    families = [FAMILIES[n] for n in names]
    total = sum(len(f.variants if args.all else f.common) for f in families)
    bar = ProgressBar(total, f"precompile sm_{args.arch}")
    _runtime.precompile(families, args.arch, everything=args.all, jobs=args.jobs,
                        progress=lambda fam, v: bar.step(fam.name_expression(v)))
    print(f"{total} variants in {_runtime.cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
