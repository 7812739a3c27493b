"""CPU: the top_k_per_row ops' argument checks and host path (no GPU needed).

Validation runs before any launch, so host inputs exercise exactly the checks GPU inputs get.
"""

import numpy as np
import pytest
import torch

import cupy_ops
from cupy_ops import CupyOpsTypeError, CupyOpsValueError
from cupy_ops.ops import top_k_per_row as op_module
from cupy_ops.reference import top_k_per_row as ref


def _prefill_args(rows=3, cols=600, top_k=128, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, cols)).astype(np.float32)
    starts = np.array([0, 3, 10][:rows], np.int32)
    ends = np.array([cols, cols - 1, 100][:rows], np.int32)
    idx = np.full((rows, top_k), -7, np.int32)
    return [logits, starts, ends, idx, rows, cols, 1, top_k]


def test_numpy_and_torch_cpu_inputs_run_the_reference():
    args = _prefill_args()
    cupy_ops.top_k_per_row_prefill(*args)
    want = ref.top_k_per_row_prefill(args[0], args[1], args[2], 3, 600, 1, 128)
    assert np.array_equal(args[3], want)
    t_args = [torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else a for a in _prefill_args()]
    cupy_ops.top_k_per_row_prefill(*t_args)
    assert np.array_equal(t_args[3].numpy(), want)


def test_decode_host_path_matches_reference():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 500)).astype(np.float32)
    sl = np.array([500, 1], np.int32)
    idx = np.zeros((4, 64), np.int32)
    cupy_ops.top_k_per_row_decode(logits, 2, sl, idx, 4, 500, 1, 64)
    assert np.array_equal(idx, ref.top_k_per_row_decode(logits, 2, sl, 4, 500, 1, 64))
    assert (idx[2] == -1).all()  # seq_len 1 < next_n 2: row 0 of that sequence sees nothing


@pytest.mark.parametrize("position, value, kind, message", [
    (0, np.zeros((3, 600), np.float64), CupyOpsTypeError, "logits.dtype"),
    (0, np.zeros(600, np.float32), CupyOpsValueError, "logits must have 2 dimensions"),
    (1, np.zeros(3, np.int64), CupyOpsTypeError, "rowStarts.dtype"),
    (2, np.zeros(2, np.int32), CupyOpsValueError, "exceeds rowEnds.shape"),
    (3, np.zeros((3, 127), np.int32), CupyOpsValueError, "smaller than topK"),
    (3, np.zeros((2, 128), np.int32), CupyOpsValueError, "exceeds indices.shape"),
    (3, np.zeros((3, 128), np.float32), CupyOpsTypeError, "indices.dtype"),
    (4, -1, CupyOpsValueError, "numRows"),
    (4, 4, CupyOpsValueError, "numRows"),
    (4, 2.0, CupyOpsTypeError, "numRows"),
    (5, 2**31, CupyOpsValueError, "stride0"),
    (6, -1, CupyOpsValueError, "stride1"),
    (7, 0, CupyOpsValueError, "topK"),
    (7, 4097, CupyOpsValueError, "topK"),
    (1, "starts", CupyOpsTypeError, "rowStarts"),
])
def test_bad_arguments_raise_named_errors(position, value, kind, message):
    args = _prefill_args()
    args[position] = value
    with pytest.raises(kind, match=message):
        cupy_ops.top_k_per_row_prefill(*args)


def test_bad_values_are_caught_on_the_host_path():
    args = _prefill_args()
    args[2] = np.array([600, 601, 100], np.int32)  # past logits.shape[1]
    with pytest.raises(CupyOpsValueError, match="passes logits.shape"):
        cupy_ops.top_k_per_row_prefill(*args)
    args = _prefill_args()
    args[1] = np.array([0, 3, 200], np.int32)      # end < start
    with pytest.raises(CupyOpsValueError, match="rowEnds"):
        cupy_ops.top_k_per_row_prefill(*args)


def test_decode_seq_lens_shapes():
    logits = np.zeros((4, 100), np.float32)
    idx = np.zeros((4, 8), np.int32)
    with pytest.raises(CupyOpsValueError, match="ceil"):
        cupy_ops.top_k_per_row_decode(logits, 2, np.array([5], np.int32), idx, 4, 100, 1, 8)
    with pytest.raises(CupyOpsValueError, match="next_n"):
        cupy_ops.top_k_per_row_decode(logits, 2, np.zeros((2, 3), np.int32), idx, 4, 100, 1, 8)
    with pytest.raises(CupyOpsValueError, match="next_n"):
        cupy_ops.top_k_per_row_decode(logits, 0, np.zeros(4, np.int32), idx, 4, 100, 1, 8)
    with pytest.raises(CupyOpsValueError, match="seq_lens"):
        cupy_ops.top_k_per_row_decode(logits, 1, np.zeros((1, 1, 4), np.int32), idx, 4, 100, 1, 8)


def test_indices_must_not_alias_inputs():
    buf = np.zeros((3, 700), np.int32)
    logits = np.zeros((3, 600), np.float32)
    starts = buf[:, 0]
    ends = np.full(3, 600, np.int32)
    with pytest.raises(CupyOpsValueError, match="overlaps rowStarts"):
        cupy_ops.top_k_per_row_prefill(logits, starts, ends, buf[:, :128], 3, 600, 1, 128)


@pytest.mark.parametrize("rows, cols, sms, arch, want", [
    (1, 32768, 132, 90, 8),
    (4, 163840, 132, 90, 8),
    (64, 131072, 132, 90, 2),
    (128, 8192, 132, 90, 1),
    (1, 6000, 132, 90, 1),     # too short to split
    (1, 32768, 108, 80, 1),    # no clusters before sm_90
])
def test_cluster_size_choice(rows, cols, sms, arch, want):
    assert op_module.launch_shape(rows, cols, sms, arch) == want


@pytest.mark.parametrize("cluster, cols, many_rows, want", [
    (1, 8192, False, 16384),         # short slice: room for its 32-bit keys
    (1, 9000, False, 9216),          # the whole slice (+ one group for an unaligned start),
    (8, 163840, False, 20992),       #   in 16 warp segments of a multiple of 32
    (2, 131072, False, 66048),       # 65536 keys per CTA: 16-bit prefixes fit whole
    (1, 8192, True, 16384),
    (1, 65536, True, 24256),         # room for two CTAs per SM: what fits
])
def test_cache_size(cluster, cols, many_rows, want):
    assert op_module.cache_elems_for(cluster, cols, 232448, many_rows) == want


def test_threads_per_cta():
    assert op_module.threads_for(64, 131072, 2) == 1024
    assert op_module.threads_for(128, 8192, 1) == 512
    assert op_module.threads_for(1, 32768, 8) == 512


def test_speculative_decode_layout_only_for_one_wave_of_decode_rows(monkeypatch):
    decode, prefill = op_module.OP_DECODE, op_module.OP_PREFILL
    assert op_module.spec_cols(decode, 128, 2, 8192, 132) == 8192
    assert op_module.spec_cols(decode, 264, 2, 8192, 132) == 8192   # two CTAs per SM
    assert op_module.spec_cols(decode, 265, 2, 8192, 132) == 0      # a second wave
    assert op_module.spec_cols(decode, 133, 1, 131072, 132) == 0    # one CTA per SM
    assert op_module.spec_cols(prefill, 8, 2, 8192, 132) == 0       # rows start anywhere
    monkeypatch.setattr(op_module, "SPECULATIVE_DECODE_LOADS", False)
    assert op_module.spec_cols(decode, 8, 2, 8192, 132) == 0


def test_ctas_per_sm_from_threads_and_shared_memory():
    h100 = 232448
    assert op_module.ctas_per_sm(512, 100_000, h100) == 2
    assert op_module.ctas_per_sm(512, 150_000, h100) == 1   # two would not fit
    assert op_module.ctas_per_sm(1024, 50_000, h100) == 1   # launch bounds: one 1024-thread CTA
    # the plan for 128 x 8192 decode fits two per SM; 64 x 131072 (C2, 1024 threads) one
    smem = op_module.smem_bytes(1, op_module.cache_elems_for(1, 8192, h100), 8192)
    assert op_module.ctas_per_sm(512, smem, h100) == 2


def test_shared_memory_budget_fits_the_device_limit():
    for cluster in op_module.CLUSTERS:
        for cols in (100, 8192, 131072, 10**6):
            for many, threads in ((False, 512), (True, 512), (False, 1024)):
                elems = op_module.cache_elems_for(cluster, cols, 232448, many, threads)
                budget = 232448 // (2 if many else 1)
                assert (op_module.smem_bytes(cluster, elems, cols, threads)
                        <= budget - op_module.STATIC_SMEM_SLACK)
                assert elems % (op_module.GROUP * threads // 32) == 0
                if cols <= 20000:
                    assert elems * cluster >= cols  # short rows are held entirely
