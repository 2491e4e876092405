#!/usr/bin/env python3
"""The torch side of bench/gemm.bench.ts (issue 13: fi.gemm >= 95% of torch.matmul, same run).

Same shapes and names: bf16 8192^3 as torch.matmul(a, b) (b [K, N]), and the Llama-3.1-8B
projections at M = 1, 16, 64, 128, 256 tokens as torch.nn.functional.linear(x, W) = x @ W^T
(W [N, K]). Timed with CUDA events after warmup, a 256 MiB buffer written before each run (L2
flush, outside the timed span), median of the runs. Prints one JSON line per shape on stdout:
{"name", "ms", "tflops"}; notes go to stderr. Without CUDA: the TS bench's tiny CPU shapes, host
clock (a smoke run). Plain python3 + torch.
    python3 bench/compare/gemm_torch.py [--iterations N]
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ITERATIONS = int(sys.argv[sys.argv.index("--iterations") + 1]) if "--iterations" in sys.argv else 50
WARMUP = 5
SHORT = "bf16"  # the names match bench/gemm.bench.ts: "<label> bf16 M=<m> N=<n> K=<k>"


def shapes(gpu):
    """(label, M, N, K, transB): transB means x @ W^T with W stored [N, K]."""
    if not gpu:
        return [("square", 64, 64, 64, False)] + [("linear", m, 128, 128, True) for m in (1, 16)]
    hidden, kv_dim, inter, vocab = 4096, 2 * 1024, 14336, 128256
    projections = [
        ("qkv_proj", hidden + kv_dim, hidden),
        ("o_proj", hidden, hidden),
        ("gate_up_proj", 2 * inter, hidden),
        ("down_proj", hidden, inter),
        ("lm_head", vocab, hidden),
    ]
    out = [("square", 8192, 8192, 8192, False)]
    for label, n, k in projections:
        out += [(label, m, n, k, True) for m in (1, 16, 64, 128, 256)]
    return out


def bench(fn, device, flush):
    for _ in range(WARMUP):
        fn()
    if device == "cpu":
        samples = []
        for _ in range(ITERATIONS):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(ITERATIONS)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(ITERATIONS)]
    for i in range(ITERATIONS):
        flush.fill_(i & 1)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def main():
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if gpu else None
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"torch {torch.__version__} on {name}, {dtype}, median of {ITERATIONS}"
          f"{' (256 MiB L2 flush)' if gpu else ' (no CUDA: tiny CPU shapes)'}", file=sys.stderr)
    gen = torch.Generator(device=device)
    for label, m, n, k, trans_b in shapes(gpu):
        gen.manual_seed(1)
        a = torch.randn(m, k, dtype=dtype, device=device, generator=gen)
        b = torch.randn((n, k) if trans_b else (k, n), dtype=dtype, device=device, generator=gen)
        fn = (lambda: F.linear(a, b)) if trans_b else (lambda: torch.matmul(a, b))
        ms = bench(fn, device, flush)
        tflops = 2 * m * n * k / (ms / 1e3) / 1e12
        print(json.dumps({"name": f"{label} {SHORT} M={m} N={n} K={k}", "ms": ms, "tflops": tflops, "deviceName": name}), flush=True)
        del a, b
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
