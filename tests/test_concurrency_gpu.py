"""GPU: ops called from several Python threads, each on its own stream, at once (issue #7).

Each thread runs merge_attn_states, top_k_per_row_decode and paged_attention_v1 on its own
inputs and stream, many times, starting from empty plan caches (so plan building and module
loading race too); every result must equal the same call made alone.
"""

import threading



import cupy_ops
from cupy_ops.ops import merge_attn_states as merge_op
from cupy_ops.ops import paged_attention as paged_op
from cupy_ops.ops import top_k_per_row as topk_op

from .conftest import requires_gpu
from .test_torch_ops import merge_args, paged_args, topk_args

pytestmark = requires_gpu


def _calls(torch, seed):
    """(function, args, output indices) for three ops with this thread's own inputs."""
    merge = merge_args(T=300, H=8, D=128, dtype=torch.bfloat16, device="cuda", seed=seed)
    topk = topk_args(True, rows=4, cols=30000, top_k=2048, device="cuda", seed=seed)
    paged = paged_args(S=4, Hq=8, Hkv=2, D=128, BS=16, lens=(100, 700, 2000, 33),
                       dtype=torch.bfloat16, device="cuda", seed=seed)
    merge_direct = (merge[0], merge[2], merge[3], merge[4], merge[5], merge[1])
    return [(cupy_ops.merge_attn_states, merge_direct, (0, 5)),
            (cupy_ops.top_k_per_row_decode, topk, (3,)),
            (cupy_ops.paged_attention_v1, paged, (0,))]


def test_threads_on_their_own_streams(torch):
    threads_n, rounds = 4, 20
    calls = [_calls(torch, seed) for seed in range(threads_n)]
    # Reference results: each call alone, on the default stream.
    want = []
    for per_thread in calls:
        out = []
        for fn, args, outs in per_thread:
            fn(*args)
            torch.cuda.synchronize()
            out.append([args[i].clone() for i in outs])
        want.append(out)
    for cache in (merge_op._PLANS, topk_op._PLANS, paged_op._PLANS):
        cache.clear()
    errors = []
    barrier = threading.Barrier(threads_n)

    def worker(t):
        try:
            stream = torch.cuda.Stream()
            barrier.wait()
            with torch.cuda.stream(stream):
                for _ in range(rounds):
                    for (fn, args, outs), expected in zip(calls[t], want[t]):
                        for i in outs:
                            args[i].fill_(-7)
                        fn(*args)
                        stream.synchronize()
                        for i, e in zip(outs, expected):
                            if not torch.equal(args[i], e):
                                errors.append(f"thread {t}: {fn.__name__} output {i} differs")
                                return
        except Exception as exc:  # noqa: BLE001 - reported below with the thread
            errors.append(f"thread {t}: {exc!r}")

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:5]
