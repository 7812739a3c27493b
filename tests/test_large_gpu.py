"""GPU, opt-in (``-m large``): tensors past 2^31 elements, for the ops whose offsets can get there
(issue #7). merge_attn_states' case lives with its other tests. Results are checked on sampled
positions, chosen so that the samples sit past element 2^31."""

import numpy as np
import pytest

import cupy_ops
from cupy_ops.reference import paged_attention as paged_ref
from cupy_ops.reference import top_k_per_row as topk_ref

from .conftest import requires_gpu

pytestmark = [requires_gpu, pytest.mark.large]


def test_top_k_rows_past_2_pow_31_elements(torch):
    """Row offsets row * stride0 pass 2^31 elements (fp16 logits, 4.3 GB)."""
    cols, top_k = 8192, 2048
    rows = 2**31 // cols + 512
    g = torch.Generator(device="cuda").manual_seed(5)
    logits = torch.randn(rows, cols, generator=g, device="cuda", dtype=torch.float16)
    starts = torch.randint(0, 64, (rows,), generator=g, device="cuda", dtype=torch.int32)
    ends = starts + torch.randint(cols // 2, cols - 64, (rows,), generator=g, device="cuda",
                                  dtype=torch.int32)
    idx = torch.full((rows, top_k), -7, dtype=torch.int32, device="cuda")
    cupy_ops.top_k_per_row_prefill(logits, starts, ends, idx, rows, cols, 1, top_k)
    torch.cuda.synchronize()
    sample = torch.cat([torch.arange(4), torch.randint(0, rows, (40,), generator=g, device="cuda").cpu(),
                        torch.arange(rows - 300, rows)]).cuda()
    assert int(sample[-1]) * cols > 2**31
    base = logits[sample].float().cpu().numpy()
    s, e = starts[sample].cpu().numpy(), ends[sample].cpu().numpy()
    want = topk_ref.top_k_per_row_prefill(base, s, e, len(sample), cols, 1, top_k)
    got = idx[sample].cpu().numpy()
    # Rows longer than K: our kernel writes the set in ascending column order.
    np.testing.assert_array_equal(got, np.sort(want, axis=1))


def test_paged_cache_past_2_pow_31_elements(torch):
    """Block ids past 2^31 / elements-per-block: the cache offsets need 64 bits (8.6 GB of bf16
    K and V). reshape_and_cache writes new tokens there; paged attention reads them back and
    must give bit for bit what it gives on a compact copy of the same blocks, which is checked
    against the float64 reference."""
    Hq, Hkv, D, BS = 32, 8, 128, 16
    per_block = Hkv * D * BS
    num_blocks = 2**31 // per_block + 1000
    lens = [1000, 517, 16, 4000]
    g = torch.Generator(device="cuda").manual_seed(6)
    kc = torch.empty(num_blocks, Hkv, D // 8, BS, 8, device="cuda", dtype=torch.bfloat16)
    vc = torch.empty(num_blocks, Hkv, D, BS, device="cuda", dtype=torch.bfloat16)
    nb = [-(-L // BS) for L in lens]
    high = num_blocks - sum(nb) - 10  # every block this test uses lies past element 2^31
    assert high * per_block > 2**31
    ids = (high + torch.randperm(sum(nb), generator=g, device="cuda")).int()
    table = torch.zeros(len(lens), max(nb), dtype=torch.int32, device="cuda")
    pos = 0
    for s, n in enumerate(nb):
        table[s, :n] = ids[pos:pos + n]
        pos += n
    # Write every token of every sequence through reshape_and_cache, at its slot.
    slots = torch.cat([(table[s, torch.arange(L, device="cuda") // BS].long() * BS
                        + torch.arange(L, device="cuda") % BS) for s, L in enumerate(lens)])
    k_new = torch.randn(len(slots), Hkv, D, generator=g, device="cuda").bfloat16()
    v_new = torch.randn(len(slots), Hkv, D, generator=g, device="cuda").bfloat16()
    cupy_ops.reshape_and_cache(k_new, v_new, kc, vc, slots, "auto")
    blk, off = slots // BS, slots % BS
    assert torch.equal(vc[blk, :, :, off], v_new)
    assert torch.equal(kc[blk, :, :, off, :].flatten(2), k_new)

    query = torch.randn(len(lens), Hq, D, generator=g, device="cuda").bfloat16()
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    scale = D ** -0.5 * 2.0
    out = torch.full_like(query, float("nan"))
    cupy_ops.paged_attention_v1(out, query, kc, vc, Hkv, scale, table, seq_lens, BS, max(lens))

    used = torch.unique(table)
    compact_k, compact_v = kc[used].clone(), vc[used].clone()
    remap = torch.full((num_blocks,), -1, dtype=torch.int32, device="cuda")
    remap[used.long()] = torch.arange(len(used), dtype=torch.int32, device="cuda")
    compact_table = remap[table.long()]
    out_compact = torch.full_like(query, float("nan"))
    cupy_ops.paged_attention_v1(out_compact, query, compact_k, compact_v, Hkv, scale, compact_table,
                                seq_lens, BS, max(lens))
    torch.cuda.synchronize()
    assert torch.equal(out, out_compact)
    want = paged_ref.paged_attention(query.float().cpu().numpy(), compact_k.float().cpu().numpy(),
                                     compact_v.float().cpu().numpy(), Hkv, scale,
                                     compact_table.cpu().numpy(), seq_lens.cpu().numpy(), BS, max(lens))
    # bf16 output and bf16-rounded probabilities in P.V (see test_paged_attention_gpu's bound).
    np.testing.assert_allclose(out.float().cpu().numpy(), want, rtol=2**-7, atol=2**-6)
