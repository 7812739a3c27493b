"""vLLM drop-in: register our ops under the names vLLM's Python code calls.

    import cupy_ops.vllm_compat
    cupy_ops.vllm_compat.install()
    torch.ops._C.paged_attention_v1(...)            # as vllm._custom_ops calls it
    torch.ops._C_cache_ops.reshape_and_cache(...)

``install()`` defines each op of ``cupy_ops._schemas.OPS`` with vLLM's schema verbatim in vLLM's
namespace (``_C``, or ``_C_cache_ops`` for cache ops), with the same CUDA, CPU (reference path)
and fake kernels as ``torch_ops``. An op that already exists there (vLLM's own extension is
loaded) is left alone, and the report says so. Calling it again changes nothing.

Load order: call ``install()`` only in a process that will not load vLLM's compiled extension
afterwards; that extension would then find its op names taken and fail to load.
"""

from __future__ import annotations

import logging

import torch

from . import _schemas, torch_ops

log = logging.getLogger("cupy_ops")

INSTALLED = "installed (cupy_ops)"
LEFT_ALONE = "left alone: torch.ops.{ns}.{name} already exists (vLLM's own extension)"
PENDING = "not installed: cupy_ops has no kernel for it yet (reference only)"

_libs: dict = {}
_ours: set = set()


def install() -> dict:
    """Register every op vLLM's own extension does not provide; idempotent.

    Returns ``{op name: what happened}``: ``INSTALLED`` (now or by an earlier call), ``LEFT_ALONE``
    (vLLM's op exists; formatted with namespace and name) or ``PENDING``.
    """
    report = {}
    for entry in _schemas.OPS:
        ns, name = entry.vllm_namespace, entry.name
        if (ns, name) in _ours:
            report[name] = INSTALLED
        elif _exists(ns, name):
            report[name] = LEFT_ALONE.format(ns=ns, name=name)
        elif entry.impl is None:
            report[name] = PENDING
        else:
            if ns not in _libs:
                _libs[ns] = torch.library.Library(ns, "FRAGMENT")
            torch_ops.register(_libs[ns], entry, entry.vllm_schema)
            _ours.add((ns, name))
            report[name] = INSTALLED
    for name, what in report.items():
        log.info("cupy_ops.vllm_compat: %s: %s", name, what)
    return report


def _exists(ns: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, ns), name)
    except (AttributeError, RuntimeError):
        return False
    return True
