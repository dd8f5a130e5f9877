"""Timing several functions fairly against each other."""
import statistics
import time

import torch


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns, repeats, device="cpu"):
    """Median wall time of each function over `repeats` runs, after one
    warm-up run each. The runs are interleaved, so that drifts in clock speed
    or machine load hit all of them alike."""
    for fn in fns:
        fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]
