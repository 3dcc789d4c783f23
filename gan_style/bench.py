"""``gan-style bench METHOD --size N``: seconds per training iteration, peak memory and GFLOP/s.

Trains the method's default (full-size, paper-preset) networks at batch 1 (the method's
``bench_batch_size``: 2 for the Swapping Autoencoder) on synthetic crops of the given size
(``data.crop_size`` follows ``--size`` unless a ``--set data.*`` says otherwise) for a few iterations through the same ``Trainer.train_step`` that real training uses, and
reports the median time per iteration after warm-up and the process's peak resident memory
(which includes the ~0.8 GB of ``import torch, torchvision``, as the reference figures do).

Seconds depend on the machine, so it also reports figures that travel between machines: the
floating-point work of one step (counted on an extra, untimed step), the rate achieved, and the
rate of a dense matmul of the step's dtype timed in the same process (``fraction_of_peak``).

``mixed_precision`` is the precision the step ran in: with ``--set train.mixed_precision=bf16`` on
hardware where bf16 was measured slower than fp32 it is ``no`` (fp32; ``train.precision_fallback``),
and ``requested_precision`` and ``precision_timings_ms`` say what was asked for and measured.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from gan_style.engine.trainer import Trainer


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: CPU features that decide which low-precision kernels are fast
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def cpu_description() -> dict[str, Any]:
    """The CPU model and its bf16-relevant flags (Linux: /proc/cpuinfo), so that every figure
    says what it was measured on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags]}


def describe_cpu_flags(flags: list[str]) -> str:
    """The flags, and on an x86 CPU the bf16 units it lacks: a figure's bf16 timings mean little
    without them (the issue-14 targets are for AMX; AVX512-BF16 is the lesser unit)."""
    if not flags:
        return "no AVX2/AVX-512/AMX"
    missing = [flag for flag in ("avx512_bf16", "amx_bf16") if flag not in flags]
    return " ".join(flags) + (f"; no {' or '.join(missing)}" if missing else "")


def _significant(x: float, digits: int = 4) -> float:
    # Tiny test networks do ~1e-3 GFLOP per step: fixed decimals would round them to zero.
    return float(f"{x:.{digits}g}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP (1e9 flop) of ``fn()``, counted by ``FlopCounterMode`` from the shapes of the
    matmuls, convolutions and attention it runs, forward and backward (elementwise work: norms,
    activations, the optimiser update, counts zero, the usual convention for model FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peak_matmul_gflops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n_max: int | None = None, calls: int = 5, budget_s: float = 1.0) -> tuple[float, int]:
    """(GFLOP/s, n): the best of up to ``calls`` timed dense n x n ``dtype`` matmuls (2 n^3 flop)
    on ``device`` with the current torch thread count: the practical peak a step is compared to.

    n doubles from 256 (these calls are the warm-up) up to ``n_max`` (2048 on CPU, 8192 on CUDA)
    while one call takes under 50 ms, so that a dtype this CPU has no fast kernels for stays small
    rather than taking minutes; timed calls stop once they have taken ``budget_s``."""
    device = torch.device(device)
    n_max = n_max or (8192 if device.type == "cuda" else 2048)

    def one_call(n: int) -> float:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=dtype)
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(device)
        return time.perf_counter() - start

    n = 256
    while n < n_max and one_call(n) < 0.05:
        n *= 2
    one_call(n)  # warm-up at the final size (the loop may have stopped before running it)
    timings: list[float] = []
    while len(timings) < calls and (len(timings) < 2 or sum(timings) < budget_s):
        timings.append(one_call(n))
    return 2 * n**3 / min(timings) / 1e9, n


def timing_unit(trainer: Trainer, size: int, batch_size: int) -> tuple[Callable[[], None], int]:
    """What a benchmark times once, on synthetic ``size`` px batches (seeded): one cycle of the
    phases that alternate by iteration (the Swapping Autoencoder's D iteration then G iteration,
    as its reference times them; 1 iteration for the others), and that cycle's iterations."""
    generator = torch.Generator().manual_seed(0)
    period = math.lcm(*(phase.every for phase in trainer.phases if phase.of == "iteration"))

    def unit() -> None:
        for _ in range(period):
            logs = trainer.train_step(trainer.method.synthetic_batch(size, batch_size, generator))
            # Force the step to finish (one host sync per step, only here in the benchmark).
            float(sum(v.float().sum() for v in logs.values()))

    return unit, period


def run_benchmark(method_name: str, size: int, steps: int = 5, warmup: int = 2, batch_size: int | None = None, preset: str | None = None, overrides: Mapping[str, Any] | None = None, count_flops: bool = True) -> dict[str, Any]:
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.kernels import STEP_DTYPES, set_conv_kernel
    from gan_style.engine.memory import page_reuse_counters
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method
    from gan_style.nn.narrow import narrow_choices
    from gan_style.nn.strided import weight_gradient_choices
    from gan_style.nn.tiles import tile_forward_choices, tile_gradient_choices

    method_cls = get_method(method_name)
    batch_size = batch_size or method_cls.bench_batch_size
    settings: dict[str, Any] = {"train.batch_size": batch_size}
    settings.update(overrides or {})
    config = config_from_overrides(method_cls, preset, settings)
    data = getattr(config, "data", None)
    if data is not None and hasattr(data, "crop_size") and not any(key.startswith("data.") for key in settings):
        # the benchmark's images are the training crops (the Swapping Autoencoder's D is built for its crop size)
        config = config_from_overrides(method_cls, preset, {**settings, "data.crop_size": size, "data.load_size": size})
    trainer = Trainer(method_cls(config), run_dir=None, show_progress=False)
    unit, period = timing_unit(trainer, size, batch_size)

    timings: list[float] = []
    for i in range(warmup + steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        unit()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    result = {
        "method": method_name,
        "size": size,
        "batch_size": batch_size,
        "steps": steps,
        "iterations_per_step": period,
        "sec_per_iter": round(statistics.median(timings), 4),
        "min_sec_per_iter": round(min(timings), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "device": str(trainer.device),
        "mixed_precision": trainer.precision.mixed_precision,  # fp32 ("no") where bf16 was measured slower
        "channels_last": trainer.channels_last,  # as chosen (train.channels_last "auto": measured)
        "kernels": trainer.kernels.describe(),
        "fused_norm_activations": trainer.fused_activations,  # (leaky) ReLUs applied inside their norm
        "kernel_timings_ms": trainer.kernels.timings_ms,
        **cpu_description(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    pages = page_reuse_counters()  # train.reuse_pages on the CPU
    if pages is not None:
        result["page_reuse"] = {"reused_fraction": round(pages.reused_fraction, 4), "fresh_mb": round(pages.fresh_bytes / 2**20),
                                "grown_mb": round(pages.grown_bytes / 2**20), "reused_mb": round(pages.reused_bytes / 2**20),
                                "peak_mapped_mb": round(pages.peak_mapped_bytes / 2**20)}
    strided = weight_gradient_choices()  # timed per shape in the steps above (fp32 CPU steps)
    if strided:
        result["strided_weight_gradients"] = strided
    narrow = narrow_choices()  # the image-facing layers' passes, likewise
    if narrow:
        result["narrow_convolutions"] = narrow
    tiles = tile_gradient_choices()  # the 3x3 and 4x4 layers' backward in bf16 steps on a CPU with AMX, likewise
    if tiles:
        result["tile_weight_gradients"] = tiles
    tile_forwards = tile_forward_choices()  # and their forward
    if tile_forwards:
        result["tile_forwards"] = tile_forwards
    if trainer.device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # Peak memory is read above, so the counted step and the matmul below change no figure that
    # is compared with the reference's. Counting slows a step down: it is an extra, untimed one.
    if trainer.precision.timings_ms:
        result.update(requested_precision=trainer.precision.requested, precision_timings_ms=trainer.precision.timings_ms)
    dtype = STEP_DTYPES.get(trainer.precision.mixed_precision, torch.float32)
    if count_flops:
        # model FLOPs: the direct convolutions' count, whatever kernel ran them; Winograd's
        # (train.winograd) executes fewer multiplications, reported as executed_gflop_per_iter
        executed = count_gflop(unit)
        gflop = executed
        if trainer.kernels.conv_kernel != "direct" or trainer.kernels.tile_gradients:  # (the tile kernel's products: not seen)
            for net in trainer.networks.values():
                set_conv_kernel(net, "direct", "direct")
            gflop = count_gflop(unit)
            for net in trainer.networks.values():
                set_conv_kernel(net, trainer.kernels.conv_kernel, trainer.kernels.weight_gradient)
            if trainer.kernels.conv_kernel == "direct":
                executed = gflop  # the tile kernel does the direct convolution's products
    peak, n = peak_matmul_gflops(trainer.device, dtype)
    result.update(peak_gflops=_significant(peak), peak_dtype=str(dtype).removeprefix("torch."), peak_matmul_n=n)
    if count_flops:
        achieved = gflop / statistics.median(timings)
        result.update(gflop_per_iter=_significant(gflop), achieved_gflops=_significant(achieved), fraction_of_peak=_significant(achieved / peak, 3))
        if executed != gflop:
            result["executed_gflop_per_iter"] = _significant(executed)
    return result


def format_result(result: Mapping[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result)
    line = (
        f"{result['method']} {result['size']}px batch {result['batch_size']}: "
        f"{result['sec_per_iter']:.3f} s/iteration (median of {result['steps']}), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['threads']} threads on {result['device']}"
        f" ({result.get('cpu', '?')}; {describe_cpu_flags(result.get('cpu_flags', []))}), "
        f"{result['mixed_precision'] if result['mixed_precision'] != 'no' else 'fp32'}: {result.get('kernels', '')}"
    )
    for field, alternative, what in (("strided_weight_gradients", "im2col", "strided shapes"),
                                     ("narrow_convolutions", "taps", "image-side passes")):  # gan_style.nn.measured
        if field in result:
            chosen = [v["kernel"] for v in result[field].values()]
            line += f" ({alternative} for {chosen.count(alternative)} of {len(chosen)} {what})"
    if result.get("fused_norm_activations"):
        line += f", {result['fused_norm_activations']} activations inside their norm"
    if "page_reuse" in result:
        line += f", freed pages reused for {100 * result['page_reuse']['reused_fraction']:.3g}% of the large blocks' bytes"
    if result.get("requested_precision", result["mixed_precision"]) != result["mixed_precision"]:
        line += f" (asked for {result['requested_precision']}, measured slower than fp32: {result['precision_timings_ms']} ms)"
    if "achieved_gflops" in result:
        line += (
            f"; {result['gflop_per_iter']:.4g} GFLOP/iteration, {result['achieved_gflops']:.4g} GFLOP/s = "
            f"{100 * result['fraction_of_peak']:.3g}% of the {result['peak_gflops']:.4g} GFLOP/s {result['peak_dtype']} matmul peak"
        )
        if "executed_gflop_per_iter" in result:
            line += f" (direct-convolution FLOPs; Winograd executed {result['executed_gflop_per_iter']:.4g})"
    else:
        line += f"; {result['peak_dtype']} matmul peak {result['peak_gflops']:.4g} GFLOP/s"
    return line
