# Device time of a torch call as the bench/ scripts measure ours: CUDA events around one call, a
# 256 MiB L2 flush before each, the median of `iterations` after a few warm-up calls.
import torch

_flush = None


def median_ms(fn, iterations=30, warmup=3):
    global _flush
    if _flush is None:
        _flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        _flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]
