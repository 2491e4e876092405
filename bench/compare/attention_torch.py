# PyTorch's side of bench/compare/attention.sh: the shapes of bench/decode.bench.ts,
# bench/prefill.bench.ts and bench/sampling.bench.ts (16-bit caches; no fp8, no paging: torch
# reads contiguous K/V) through scaled_dot_product_attention with each of its fused backends
# (FlashAttention-2 and cuDNN; GQA by enable_gqa), and torch's sampling (multinomial; top-p by
# sort and cumsum; top-k by topk). CUDA events, a 256 MiB L2 flush before each run, median of 30.
# One JSON line per (shape, backend): {name, backend, ms, value, unit} with our figure's name and
# unit (TB/s of K+V bytes, TFLOP/s with causal counting half, or ms).
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_timing import median_ms  # bench/compare/torch_timing.py

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def emit(name, backend, ms, value, unit):
    print(json.dumps({"name": name, "backend": backend, "ms": ms, "value": value, "unit": unit}), flush=True)


def sdpa(name, q, k, v, causal, measure):
    for label, backend in BACKENDS.items():
        try:
            with sdpa_kernel([backend]):
                ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]))
        except RuntimeError as e:
            print(f"{name} [{label}]: {str(e).splitlines()[0][:160]}", file=sys.stderr)
            continue
        emit(name, label, ms, *measure(ms))


torch.manual_seed(0)
# Decode: one query row per request, TB/s of K+V.
for batch, kv, hq, hkv, d, page, dtype in [
    (128, 4096, 32, 8, 128, 16, "bfloat16"), (1, 32768, 32, 8, 128, 16, "bfloat16"), (16, 8192, 32, 8, 128, 16, "bfloat16"),
    (64, 2048, 32, 32, 128, 16, "float16"), (64, 2048, 32, 8, 128, 16, "bfloat16"), (256, 1024, 64, 8, 128, 16, "bfloat16"),
    (64, 8192, 32, 32, 128, 16, "bfloat16"),
]:
    t = DTYPES[dtype]
    q = torch.randn(batch, hq, 1, d, dtype=t, device="cuda")
    k = torch.randn(batch, hkv, kv, d, dtype=t, device="cuda")
    v = torch.randn(batch, hkv, kv, d, dtype=t, device="cuda")
    nbytes = batch * kv * hkv * d * 2 * 2
    sdpa(f"decode batch {batch} kv {kv} heads {hq}/{hkv} d {d} page {page} {dtype}", q, k, v, False,
         lambda ms: (nbytes / (ms / 1e3) / 1e12, "TB/s (K+V bytes / time)"))
    del q, k, v
# Prefill: equal lengths per request (our ragged and paged batches), TFLOP/s.
for name, batch, length, hq, hkv, d, causal in [
    ("single prefill 8192 causal", 1, 8192, 32, 8, 128, True), ("batch 16 x 1024 paged (page 16) causal", 16, 1024, 32, 8, 128, True),
    ("single prefill 8192", 1, 8192, 32, 8, 128, False), ("batch 16 x 1024 ragged causal", 16, 1024, 32, 8, 128, True),
    ("single prefill 8192 causal", 1, 8192, 32, 8, 64, True), ("single prefill 8192 causal", 1, 8192, 16, 16, 256, True),
    ("batch 64 x 512 paged (page 16) causal", 64, 512, 32, 8, 128, True),
]:
    q = torch.randn(batch, hq, length, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, hkv, length, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(batch, hkv, length, d, dtype=torch.bfloat16, device="cuda")
    flops = batch * 4 * length * length * hq * d / (2 if causal else 1)
    sdpa(f"{name}, {hq}/{hkv} heads d {d} bfloat16", q, k, v, causal, lambda ms: (flops / (ms / 1e3) / 1e12, "TFLOP/s (causal counts half)"))
    del q, k, v
# Sampling at [128, 128256] float32.
batch, vocab = 128, 128256
for sigma in (1, 5):
    probs = torch.softmax(torch.randn(batch, vocab, device="cuda") * sigma, dim=-1)

    def top_p(p):
        s, idx = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(s, dim=-1) - s < p
        s = s * keep
        return idx.gather(-1, torch.multinomial(s, 1))

    def top_k(k):
        v, idx = torch.topk(probs, k, dim=-1)
        return idx.gather(-1, torch.multinomial(v, 1))

    suffix = f", softmax(N(0,{sigma}^2)) [{batch}, {vocab}]"
    for name, fn in [("samplingFromProbs", lambda: torch.multinomial(probs, 1)), ("topPSamplingFromProbs p=0.9", lambda: top_p(0.9)),
                     ("topPSamplingFromProbs p=0.5", lambda: top_p(0.5)), ("topKSamplingFromProbs k=50", lambda: top_k(50))]:
        ms = median_ms(fn)
        emit(name + suffix, "torch", ms, ms, "ms")
