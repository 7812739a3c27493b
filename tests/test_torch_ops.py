"""torch.library ops (torch.ops.cupy_ops.*): schemas, registration, fake tensors, opcheck and
torch.compile on CPU tensors (reference path); opcheck, torch.compile, CUDA graph capture/replay
and host time on the GPU (skip without one)."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cupy_ops  # noqa: E402
from cupy_ops import _schemas, torch_ops  # noqa: E402

from .conftest import requires_gpu  # noqa: E402

ops = torch.ops.cupy_ops


def _mutated(schema):
    return [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]


# --------------------------------------------------------------------------------------------
# The table

def test_importing_cupy_ops_does_not_import_torch():
    code = "import sys, cupy_ops; cupy_ops.decode_attention; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("entry", _schemas.OPS, ids=lambda e: e.name)
def test_schemas_parse_and_agree_with_vllm(entry):
    ours = torch._C.parse_schema(entry.schema)
    theirs = torch._C.parse_schema(entry.vllm_schema)
    assert ours.name == theirs.name == entry.name
    names = [a.name for a in ours.arguments]
    assert len(set(names)) == len(names), "argument names must be distinct"
    positional = [a for a in ours.arguments if not a.kwarg_only]
    assert len(positional) == len(theirs.arguments)
    for a, b in zip(positional, theirs.arguments):
        # Same type; ours may be Optional where vLLM requires a tensor it does not read (scales).
        assert str(a.type) in (str(b.type), f"Optional[{b.type}]"), (a, b)
        assert (a.alias_info is not None and a.alias_info.is_write) == \
               (b.alias_info is not None and b.alias_info.is_write), (a, b)
    assert ours.returns == theirs.returns == []
    assert _mutated(ours), "every op writes its outputs in place"
    # Each mutated argument has its own alias set.
    sets = [a.alias_info.before_set for a in ours.arguments if a.alias_info is not None]
    assert len(set(map(str, sets))) == len(sets)


def test_every_implemented_op_is_registered():
    implemented = [e.name for e in _schemas.OPS if e.impl is not None]
    assert set(implemented) >= {"merge_attn_states", "paged_attention_v1", "paged_attention_v2",
                                "reshape_and_cache"}
    assert torch_ops.REGISTERED == tuple(implemented)
    for name in implemented:
        op = getattr(ops, name).default
        assert str(op._schema) == f"{torch_ops.NAMESPACE}::" + \
            str(torch._C.parse_schema(next(e.schema for e in _schemas.OPS if e.name == name)))
        for key in ("CUDA", "CPU"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key)
        assert torch.Tag.pt2_compliant_tag in op.tags


# --------------------------------------------------------------------------------------------
# Small CPU problems (reference path)

def merge_args(T=5, H=3, D=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    pre, suf = (torch.randn(T, H, D, generator=g).to(device, dtype) for _ in range(2))
    plse, slse = (torch.randn(H, T, generator=g).to(device) for _ in range(2))
    return (torch.empty(T, H, D, dtype=dtype, device=device), torch.empty(H, T, device=device),
            pre, plse, suf, slse)


def paged_args(S=3, Hq=4, Hkv=2, D=32, BS=8, lens=(5, 17, 30), dtype=torch.float32, device="cpu",
               seed=0):
    """v1 arguments in the torch op's order, with a cache whose blocks are shuffled."""
    g = torch.Generator().manual_seed(seed)
    x = 16 // torch.empty(0, dtype=dtype).element_size()
    per_seq = -(-max(lens) // BS)
    nb = S * per_seq
    q = torch.randn(S, Hq, D, generator=g).to(device, dtype)
    kc = torch.randn(nb, Hkv, D // x, BS, x, generator=g).to(device, dtype)
    vc = torch.randn(nb, Hkv, D, BS, generator=g).to(device, dtype)
    table = torch.randperm(nb, generator=g).int().reshape(S, per_seq).to(device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    return (torch.empty_like(q), q, kc, vc, Hkv, D ** -0.5, table, seq_lens, BS, max(lens))


def v2_args(v1, P=None):
    out, q = v1[0], v1[1]
    S, Hq, D = q.shape
    P = P or -(-v1[9] // 512)
    # Zeros: entries past a sequence's partitions are never written (spec §5.2).
    es = torch.zeros(S, Hq, P, device=q.device)
    return (out, es, torch.zeros_like(es), torch.zeros(S, Hq, P, D, dtype=q.dtype, device=q.device)) + v1[1:]


def cache_args(tokens=6, H=2, D=32, BS=4, NB=5, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 16 // torch.empty(0, dtype=dtype).element_size()
    k, v = (torch.randn(tokens, H, D, generator=g).to(device, dtype) for _ in range(2))
    kc = torch.zeros(NB, H, D // x, BS, x, dtype=dtype, device=device)
    vc = torch.zeros(NB, H, D, BS, dtype=dtype, device=device)
    slots = torch.randperm(NB * BS, generator=g)[:tokens].to(device)
    slots[1] = -1
    return (k, v, kc, vc, slots, "auto", None, None)


def topk_args(decode, rows=4, cols=700, top_k=64, device="cpu", seed=0):
    """top_k_per_row_* arguments in vLLM's order (rows longer and shorter than top_k)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, cols, generator=g).to(device)
    idx = torch.full((rows, top_k), -7, dtype=torch.int32, device=device)
    if decode:
        seq_lens = torch.tensor([cols, 30], dtype=torch.int32, device=device)
        return (logits, 2, seq_lens, idx, rows, cols, 1, top_k)
    starts = torch.tensor([0, 3, 5, 100][:rows], dtype=torch.int32, device=device)
    ends = torch.tensor([cols, 600, 40, 700][:rows], dtype=torch.int32, device=device)
    return (logits, starts, ends, idx, rows, cols, 1, top_k)


def vs_args(mergehead, B=2, H=3, ctx=300, nv=8, ns=12, bm=64, device="cpu", seed=0):
    """convert_vertical_slash_indexes(_mergehead) arguments in the torch op's order."""
    g = torch.Generator().manual_seed(seed)
    rows = -(-ctx // bm)
    q = torch.tensor([ctx, ctx // 2], dtype=torch.int32)[:B]
    kv = q + torch.tensor([40, 0], dtype=torch.int32)[:B]
    vert = torch.stack([torch.stack([torch.sort(torch.randperm(int(kv[b]), generator=g)[:nv])[0]
                                     for _ in range(H)]) for b in range(B)]).int()
    slash = torch.stack([torch.stack([torch.sort(torch.randperm(int(kv[b]), generator=g)[:ns],
                                                 descending=True)[0] for _ in range(H)])
                         for b in range(B)]).int()
    slash[..., -1] = 0
    outs = (torch.zeros(B, H, rows, dtype=torch.int32), torch.zeros(B, H, rows, ns, dtype=torch.int32),
            torch.zeros(B, H, rows, dtype=torch.int32), torch.zeros(B, H, rows, nv, dtype=torch.int32))
    ins = (q, kv, vert, slash)
    if mergehead:
        ins += (torch.tensor([nv, nv // 2, 1][:H], dtype=torch.int32),
                torch.tensor([ns, 3, ns // 2][:H], dtype=torch.int32))
    return tuple(t.to(device) for t in outs + ins) + (ctx, bm, bm, True)


CPU_CASES = {
    "convert_vertical_slash_indexes": lambda: vs_args(False),
    "convert_vertical_slash_indexes_mergehead": lambda: vs_args(True),
    "top_k_per_row_prefill": lambda: topk_args(False),
    "top_k_per_row_decode": lambda: topk_args(True),
    "merge_attn_states": lambda: merge_args(),
    "paged_attention_v1": lambda: paged_args(),
    "paged_attention_v2": lambda: v2_args(paged_args(lens=(5, 600, 1030), BS=16)),
    "reshape_and_cache": lambda: cache_args(),
}


@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_torch_op_matches_direct_call_on_cpu(name):
    args = CPU_CASES[name]()
    direct = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    getattr(ops, name)(*args)
    entry = next(e for e in _schemas.OPS if e.name == name)
    entry.impl(*direct)
    for a, b in zip(args, direct):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_fake_tensor_mode(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = CPU_CASES[name]()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        assert getattr(ops, name)(*fake) is None


@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_opcheck_cpu(name):
    torch.library.opcheck(getattr(ops, name).default, CPU_CASES[name]())


def decode_step(q, kc, vc, table, seq_lens, prefix_out, prefix_lse, suffix_lse, Hkv, BS, L):
    """A decode step: paged attention over the cache, merged with a prefix result."""
    out = torch.empty_like(q)
    ops.paged_attention_v1(out, q, kc, vc, Hkv, q.shape[-1] ** -0.5, table, seq_lens, BS, L)
    merged = torch.empty_like(q)
    ops.merge_attn_states(merged, None, prefix_out, prefix_lse, out, suffix_lse)
    return merged * 2


def _decode_inputs(device, dtype=torch.float32):
    _, q, kc, vc, Hkv, _, table, seq_lens, BS, L = paged_args(device=device, dtype=dtype)
    _, _, pre, plse, _, slse = merge_args(T=q.shape[0], H=q.shape[1], D=q.shape[2], device=device,
                                          dtype=dtype)
    return (q, kc, vc, table, seq_lens, pre, plse, slse, Hkv, BS, L)


def test_compile_fullgraph_cpu():
    torch._dynamo.reset()
    inputs = _decode_inputs("cpu")
    compiled = torch.compile(decode_step, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*inputs), decode_step(*inputs))


# --------------------------------------------------------------------------------------------
# GPU

GPU_CASES = {
    "merge_attn_states": lambda: merge_args(T=64, H=8, D=128, dtype=torch.bfloat16, device="cuda"),
    "paged_attention_v1": lambda: paged_args(S=4, Hq=8, Hkv=2, D=128, BS=16, lens=(1, 100, 700, 2000),
                                             dtype=torch.bfloat16, device="cuda"),
    "paged_attention_v2": lambda: v2_args(paged_args(S=4, Hq=8, Hkv=2, D=128, BS=16,
                                                     lens=(1, 100, 700, 2000), dtype=torch.bfloat16,
                                                     device="cuda")),
    "reshape_and_cache": lambda: cache_args(tokens=40, H=4, D=128, BS=16, NB=8, dtype=torch.bfloat16,
                                            device="cuda"),
    "top_k_per_row_prefill": lambda: topk_args(False, cols=9000, top_k=2048, device="cuda"),
    "convert_vertical_slash_indexes": lambda: vs_args(False, ctx=2000, nv=64, ns=300, device="cuda"),
    "convert_vertical_slash_indexes_mergehead": lambda: vs_args(True, ctx=2000, nv=64, ns=300,
                                                                device="cuda"),
    "top_k_per_row_decode": lambda: topk_args(True, cols=40000, top_k=2048, device="cuda"),
}


@requires_gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_opcheck_cuda(name):
    torch.library.opcheck(getattr(ops, name).default, GPU_CASES[name]())


@requires_gpu
def test_compile_fullgraph_cuda_decode_step():
    torch._dynamo.reset()
    inputs = _decode_inputs("cuda", torch.bfloat16)
    expected = decode_step(*inputs)
    explain = torch._dynamo.explain(decode_step)(*inputs)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    compiled = torch.compile(decode_step, fullgraph=True)
    assert torch.equal(compiled(*inputs), expected)


def _refill(args, seed):
    """New random values into the same input buffers (outputs and integer tables kept)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
            a.copy_(torch.randn(a.shape, generator=g, device="cuda"))


@requires_gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_cuda_graph_capture_and_replay(name):
    """Capture once, write new inputs into the same buffers, replay: equals an eager call on
    the new values. Inputs vs outputs: only arguments the schema marks mutable are outputs."""
    args = GPU_CASES[name]()
    op = getattr(ops, name)
    schema = op.default._schema
    outputs = {i for i, a in enumerate(schema.arguments)
               if a.alias_info is not None and a.alias_info.is_write}
    inputs = [a for i, a in enumerate(args) if i not in outputs]
    op(*args)  # warm-up: loads the kernel and builds the launch plan
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        op(*args)
    for seed in (1, 2):
        _refill(inputs, seed)
        graph.replay()
        replayed = [args[i].clone() for i in sorted(outputs) if args[i] is not None]
        op(*args)  # eager, same buffers and values
        torch.cuda.synchronize()
        eager = [args[i] for i in sorted(outputs) if args[i] is not None]
        for r, e in zip(replayed, eager):
            assert torch.equal(r, e)


@requires_gpu
def test_capture_that_would_need_a_kernel_load_fails_clearly(monkeypatch):
    from cupy_ops import _runtime
    from cupy_ops.ops import merge_attn_states as mas
    monkeypatch.setattr(_runtime, "_modules", {})
    mas._PLANS.clear()
    args = merge_args(T=3, H=2, D=64, dtype=torch.float16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturing a CUDA graph"):
        with torch.cuda.graph(graph):
            ops.merge_attn_states(*args)
    mas._PLANS.clear()


@requires_gpu
def test_host_time_through_torch_library():
    """The torch.library path costs the dispatcher's boxing and one Python frame on top of the
    direct call. The issue's target (<= 20 us in total) is tracked in docs/perf.md, not asserted
    here: host timings on a shared machine vary by 2x. This test catches regressions that add
    real work per call (a plan rebuilt, a sync): more than 25 us over the direct call."""
    times = torch_ops.measure_host_time_us(reps=1000)
    for name, t in times.items():
        print(f"{name}: direct {t['direct']:.1f} us, torch.library {t['torch_library']:.1f} us")
        assert t["torch_library"] - t["direct"] < 25.0, (name, t)


def test_numpy_inputs_still_work_without_the_torch_path():
    out = np.empty((2, 1, 8), np.float32)
    x = np.ones((2, 1, 8), np.float32)
    lse = np.zeros((1, 2), np.float32)
    cupy_ops.merge_attn_states(out, x, lse, x, lse)
    assert np.array_equal(out, x)
