"""``gan-style bench METHOD --size N``: seconds per training iteration and peak memory.

Trains the method's default (full-size, paper-preset) networks at batch 1 on synthetic images
for a few iterations through the same ``Trainer.train_step`` that real training uses, and
reports the median time per iteration after warm-up and the process's peak resident memory
(which includes the ~0.8 GB of ``import torch, torchvision``, as the reference figures do).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from typing import Any, Mapping

import torch


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(method_name: str, size: int, steps: int = 5, warmup: int = 2, batch_size: int = 1, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method
    from gan_style.methods.base import config_from_overrides

    method_cls = get_method(method_name)
    settings: dict[str, Any] = {"train.batch_size": batch_size}
    settings.update(overrides or {})
    config = config_from_overrides(method_cls, preset, settings)
    trainer = Trainer(method_cls(config), run_dir=None, show_progress=False)
    generator = torch.Generator().manual_seed(0)
    timings: list[float] = []
    for i in range(warmup + steps):
        batch = trainer.method.synthetic_batch(size, batch_size, generator)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logs = trainer.train_step(batch)
        # Force the step to finish (one host sync per step, only here in the benchmark).
        float(sum(v.float().sum() for v in logs.values()))
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    result = {
        "method": method_name,
        "size": size,
        "batch_size": batch_size,
        "steps": steps,
        "sec_per_iter": round(statistics.median(timings), 4),
        "min_sec_per_iter": round(min(timings), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "device": str(trainer.device),
        "mixed_precision": config.train.mixed_precision,
        "channels_last": config.train.channels_last,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if trainer.device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def format_result(result: Mapping[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result)
    return (
        f"{result['method']} {result['size']}px batch {result['batch_size']}: "
        f"{result['sec_per_iter']:.3f} s/iteration (median of {result['steps']}), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['threads']} threads on {result['device']}"
    )
