"""vllm_compat.install(): ops under vLLM's names, called exactly as vllm._custom_ops calls them
(positional, the torch op's argument order, spec §1 of each op), on CPU tensors (reference path)
and on the GPU (skips without one)."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import cupy_ops  # noqa: E402
from cupy_ops import _schemas, vllm_compat  # noqa: E402

from .conftest import requires_gpu  # noqa: E402
from .test_torch_ops import cache_args, merge_args, paged_args, topk_args, v2_args  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def installed():
    return vllm_compat.install()


# The wrappers of vllm/_custom_ops.py restated: they forward every argument positionally.
def vllm_paged_attention_v1(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables,
                            seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale,
                            v_scale, tp_rank=0, blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                            blocksparse_block_size=64, blocksparse_head_sliding_step=0):
    torch.ops._C.paged_attention_v1(
        out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
        max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
        blocksparse_head_sliding_step)


def vllm_paged_attention_v2(out, exp_sum, max_logits, tmp_out, query, key_cache, value_cache,
                            num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len,
                            alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank=0,
                            blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                            blocksparse_block_size=64, blocksparse_head_sliding_step=0):
    torch.ops._C.paged_attention_v2(
        out, exp_sum, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads, scale,
        block_tables, seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale,
        v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
        blocksparse_block_size, blocksparse_head_sliding_step)


def vllm_merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                           output_lse=None):
    torch.ops._C.merge_attn_states(output, output_lse, prefix_output, prefix_lse, suffix_output,
                                   suffix_lse)


def vllm_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype,
                           k_scale, v_scale):
    torch.ops._C_cache_ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                                             kv_cache_dtype, k_scale, v_scale)


def vllm_top_k_per_row_prefill(logits, row_starts, row_ends, indices, num_rows, stride0, stride1,
                               top_k):
    torch.ops._C.top_k_per_row_prefill(logits, row_starts, row_ends, indices, num_rows, stride0,
                                       stride1, top_k)


def vllm_top_k_per_row_decode(logits, next_n, seq_lens, indices, num_rows, stride0, stride1, top_k):
    torch.ops._C.top_k_per_row_decode(logits, next_n, seq_lens, indices, num_rows, stride0, stride1,
                                      top_k)


def _cases(device, dtype):
    one = torch.ones((), device=device)
    kw = dict(device=device, dtype=dtype)
    v1 = paged_args(**kw) + (None, "auto", one, one)
    v2 = v2_args(paged_args(lens=(5, 600, 1030), BS=16, **kw)) + (None, "auto", one, one)
    merge = merge_args(**kw)
    merge_py = (merge[0], merge[2], merge[3], merge[4], merge[5], merge[1])  # wrapper order
    cache = cache_args(**kw)[:5] + ("auto", one, one)
    return {
        "paged_attention_v1": (vllm_paged_attention_v1, cupy_ops.paged_attention_v1, v1),
        "paged_attention_v2": (vllm_paged_attention_v2, cupy_ops.paged_attention_v2, v2),
        "merge_attn_states": (vllm_merge_attn_states, cupy_ops.merge_attn_states, merge_py),
        "reshape_and_cache": (vllm_reshape_and_cache, cupy_ops.reshape_and_cache, cache),
        "top_k_per_row_prefill": (vllm_top_k_per_row_prefill, cupy_ops.top_k_per_row_prefill,
                                  topk_args(False, device=device)),
        "top_k_per_row_decode": (vllm_top_k_per_row_decode, cupy_ops.top_k_per_row_decode,
                                 topk_args(True, cols=5000, top_k=2048, device=device)),
    }


def _check_same_as_direct(device, dtype):
    for name, (through_vllm, direct, args) in _cases(device, dtype).items():
        copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        through_vllm(*args)
        direct(*copies)
        for a, b in zip(args, copies):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)


def test_install_reports_every_op(installed):
    assert set(installed) == {e.name for e in _schemas.OPS}
    for e in _schemas.OPS:
        want = vllm_compat.INSTALLED if e.impl is not None else vllm_compat.PENDING
        assert installed[e.name] == want


def test_install_is_idempotent(installed):
    assert vllm_compat.install() == installed


def test_vllm_schemas_are_registered_verbatim():
    for e in _schemas.OPS:
        if e.impl is None:
            continue
        op = getattr(getattr(torch.ops, e.vllm_namespace), e.name).default
        assert str(op._schema) == f"{e.vllm_namespace}::" + str(torch._C.parse_schema(e.vllm_schema))


def test_calls_as_vllm_makes_them_on_cpu():
    _check_same_as_direct("cpu", torch.float32)


def test_existing_ops_are_left_alone():
    code = textwrap.dedent("""
        import torch
        lib = torch.library.Library("_C", "FRAGMENT")
        lib.define("merge_attn_states(Tensor! output, Tensor!? output_lse, Tensor prefix_output, "
                   "Tensor prefix_lse, Tensor suffix_output, Tensor suffix_lse) -> ()")
        from cupy_ops import vllm_compat
        report = vllm_compat.install()
        assert report["merge_attn_states"].startswith("left alone"), report
        assert report["paged_attention_v1"] == vllm_compat.INSTALLED, report
        assert vllm_compat.install() == report
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@requires_gpu
def test_calls_as_vllm_makes_them_on_gpu():
    _check_same_as_direct("cuda", torch.bfloat16)
