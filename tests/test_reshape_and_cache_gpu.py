"""GPU: reshape_and_cache bit for bit against the exact reference (skips without a GPU).

Caches start as a sentinel byte pattern so that every slot the kernel must not write (padding
tokens, slot -1, slots past the cache, other blocks) is checked unchanged; keys hold special
values (huge, tiny, inf, -0.0, NaN) for the fp8 encoder.
"""

import numpy as np
import pytest

import cupy_ops
from cupy_ops.ops import reshape_and_cache as rc
from cupy_ops.reference.paged_attention import fp8_to_float64
from cupy_ops.reference.reshape_and_cache import reshape_and_cache as reference

from .conftest import precompile, requires_gpu

pytestmark = requires_gpu

FP8 = {"fp8": "e4m3", "fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2"}


@pytest.fixture(scope="module", autouse=True)
def prebuilt():
    precompile(rc.FAMILY, jobs=4)


def _make(torch, dtype, kv, tokens, heads, head_size, block_size, num_blocks, seed, strided=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    fp8 = kv != "auto"
    x = 16 // (1 if fp8 else torch.empty(0, dtype=dt).element_size())
    pad = 3  # key/value rows past num_tokens (vLLM pads them for CUDA graphs)
    if strided:  # key and value as slices of one fused [tokens, 3 * heads, head_size] buffer
        qkv = torch.randn(tokens + pad, 3 * heads, head_size, generator=g, device="cuda").to(dt)
        key, value = qkv[:, heads:2 * heads], qkv[:, 2 * heads:]
    else:
        key = torch.randn(tokens + pad, heads, head_size, generator=g, device="cuda").to(dt)
        value = torch.randn(tokens + pad, heads, head_size, generator=g, device="cuda").to(dt)
    if fp8 and tokens:
        special = torch.tensor([1e6, -1e6, 1e-9, -0.0, float("inf"), float("-inf"), float("nan"), 3.0])
        key[0, 0, :8] = special.to(dt)
    cache_dt, sentinel = (torch.uint8, 0x5A) if fp8 else (dt, -7.0)
    kc = torch.full((num_blocks, heads, head_size // x, block_size, x), sentinel, dtype=cache_dt,
                    device="cuda")
    vc = torch.full((num_blocks, heads, head_size, block_size), sentinel, dtype=cache_dt, device="cuda")
    slots = torch.randperm(num_blocks * block_size, generator=g, device="cuda")[:tokens]
    if tokens > 3:
        slots[1] = -1                               # padding token
        slots[2] = num_blocks * block_size + 5      # past the cache: skipped, never written
    return key, value, kc, vc, slots.to(torch.int64)


def _expected(torch, key, value, kc, vc, slots, kv, ks, vs):
    fp8 = kv != "auto"
    n = slots.shape[0]
    host_slots = slots.cpu().numpy()
    host_slots = np.where(host_slots >= kc.shape[0] * kc.shape[3], -1, host_slots)  # skipped
    as_np = (lambda t: t.cpu().numpy()) if fp8 else (lambda t: t.float().cpu().numpy())
    return reference(key[:n].float().cpu().numpy(), value[:n].float().cpu().numpy(), as_np(kc),
                     as_np(vc), host_slots, kv, ks, vs)


def _same(torch, got, want, kv):
    if kv == "auto":
        return np.array_equal(got.float().cpu().numpy(), want, equal_nan=True)
    g = got.cpu().numpy()
    fmt = FP8[kv]
    nan = np.isnan(fp8_to_float64(g, fmt))
    return np.array_equal(nan, np.isnan(fp8_to_float64(want, fmt))) and np.array_equal(g[~nan], want[~nan])


CASES = [
    # dtype, kv, tokens, heads, head_size, block_size, num_blocks
    ("bfloat16", "auto", 40, 8, 128, 16, 6),
    ("float16", "auto", 1, 1, 64, 8, 1),         # one token
    ("float32", "auto", 37, 3, 80, 32, 2),       # odd sizes, x = 4
    ("bfloat16", "fp8_e4m3", 50, 4, 128, 16, 5),
    ("float16", "fp8_e5m2", 33, 2, 256, 1, 64),  # block_size 1
    ("float32", "fp8", 17, 5, 96, 7, 4),         # non-power-of-two block size
    ("bfloat16", "auto", 0, 4, 64, 16, 2),       # no tokens: nothing happens
]


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype,kv,tokens,heads,head_size,block_size,num_blocks", CASES)
def test_bit_exact_against_reference(torch, dtype, kv, tokens, heads, head_size, block_size,
                                     num_blocks, strided):
    key, value, kc, vc, slots = _make(torch, dtype, kv, tokens, heads, head_size, block_size,
                                      num_blocks, seed=tokens, strided=strided)
    ks, vs = 0.37, 2.5
    want = _expected(torch, key, value, kc, vc, slots, kv, ks, vs)
    scale = lambda s: torch.tensor(s, device="cuda")  # noqa: E731
    cupy_ops.reshape_and_cache(key, value, kc, vc, slots, kv, scale(ks), scale(vs))
    torch.cuda.synchronize()
    assert _same(torch, kc, want[0], kv) and _same(torch, vc, want[1], kv)


def test_cupy_inputs_run_on_cupys_stream(torch):
    cupy = pytest.importorskip("cupy")
    key, value, kc, vc, slots = _make(torch, "float16", "fp8_e4m3", 20, 2, 64, 16, 3, seed=9)
    want = _expected(torch, key, value, kc, vc, slots, "fp8_e4m3", 0.5, 0.25)
    torch.cuda.synchronize()
    c = cupy.from_dlpack
    kcc, vcc = c(kc), c(vc)
    with cupy.cuda.Stream(non_blocking=True) as stream:
        cupy_ops.reshape_and_cache(c(key), c(value), kcc, vcc, c(slots), "fp8_e4m3",
                                   cupy.full((), 0.5, cupy.float32), cupy.full((), 0.25, cupy.float32))
        stream.synchronize()
    assert np.array_equal(cupy.asnumpy(kcc), want[0]) and np.array_equal(cupy.asnumpy(vcc), want[1])


def test_validate_rejects_slots_past_the_cache(torch):
    key, value, kc, vc, slots = _make(torch, "bfloat16", "auto", 10, 2, 64, 16, 2, seed=3)
    with pytest.raises(cupy_ops.CupyOpsValueError, match="outside the cache"):
        cupy_ops.reshape_and_cache(key, value, kc, vc, slots, "auto", None, None, validate=True)


def test_repeated_calls_hit_the_plan_cache(torch):
    key, value, kc, vc, slots = _make(torch, "bfloat16", "auto", 10, 2, 64, 16, 2, seed=4)
    rc._PLANS.clear()
    for _ in range(3):
        cupy_ops.reshape_and_cache(key, value, kc, vc, slots, "auto", None, None)
    assert len(rc._PLANS._plans) == 1
