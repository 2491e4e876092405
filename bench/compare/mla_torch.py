# The MLA decode shapes of bench/mla.bench.ts in PyTorch, absorbed-weight form: per request,
# q = [q_nope | q_pe] (128 heads x 576) attends the latent cache (L x 576, shared by every head)
# with values the latent's first 512 dims, through scaled_dot_product_attention (the latent
# broadcast over heads by expand; contiguous per-request caches, no paging). CUDA events, L2
# flushed, median of 50. Prints one JSON line per shape: {name, ms, tbps}.
import json
import torch
import torch.nn.functional as F
from torch_timing import median_ms  # bench/compare/torch_timing.py

H, C, R = 128, 512, 64


torch.manual_seed(0)
for batch, length in [(128, 4096), (1, 32768)]:
    latent = torch.randn(batch, 1, length, C + R, dtype=torch.bfloat16, device="cuda")
    q = torch.randn(batch, H, 1, C + R, dtype=torch.bfloat16, device="cuda")
    k = latent.expand(batch, H, length, C + R)
    v = latent[..., :C].expand(batch, H, length, C)
    scale = 1 / 192 ** 0.5
    try:
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), iterations=50, warmup=5)
    except RuntimeError as e:  # out of memory on some backends: report and go on
        print(json.dumps({"name": f"mla decode batch {batch} x {length}, {H} heads", "error": str(e)[:200]}))
        continue
    tbps = batch * length * (C + R) * 2 / (ms / 1e3) / 1e12
    print(json.dumps({"name": f"mla decode batch {batch} x {length}, {H} heads", "ms": ms, "tbps": tbps}))
