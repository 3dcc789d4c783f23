"""The trainer's own options: schedule, budget, precision, logging and checkpoint cadence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from gan_style.config import ConfigError

LR_POLICIES = ("linear", "step", "multistep", "cosine", "constant", "inverse", "plateau")
LR_UNITS = ("epoch", "iteration")
MIXED_PRECISION = ("no", "fp16", "bf16")
#: The metrics train.eval_metrics may name: the cheap ones (gan_style.evaluation).
EVAL_METRICS = ("swd", "ssim", "fid", "kid")


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"train.{name} must be {expected}, got {value!r}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class TrainConfig:
    batch_size: int = 1
    # Epoch schedule of the CycleGAN family: n_epochs at the initial learning rate, then
    # n_epochs_decay more with the policy below. epoch_count is the number of the first epoch.
    n_epochs: int = 100
    n_epochs_decay: int = 100
    epoch_count: int = 1
    # Learning-rate schedule (gan_style.engine.schedules): the factor of each base lr, counted in
    # lr_unit. "epoch" reproduces the CycleGAN/CUT reference (changes at epoch ends, the run lasts
    # total_epochs); "iteration" changes it before every iteration and the run lasts max_steps.
    lr_unit: str = "epoch"
    lr_policy: str = "linear"  # one of LR_POLICIES; plateau needs the epoch unit
    lr_decay_iters: int = 50  # step policy, epoch unit: the reference's step size, in epochs
    lr_step_size: int | None = None  # step policy: step size in lr_unit; None: lr_decay_iters (epochs)
    lr_gamma: float = 0.1  # step / multistep: the factor at each step (reference: 0.1; MUNIT: 0.5)
    lr_milestones: tuple[int, ...] = ()  # multistep: increasing points, in lr_unit, where lr *= gamma
    lr_decay_start: int = 0  # linear, iteration unit: iterations at the full lr before the decay to max_steps
    lr_inverse_k: float = 5e-5  # inverse: lr / (1 + k * t) (AdaIN reference: k = 5e-5 per iteration)
    lr_warmup_steps: int = 0  # linear warm-up over this many first iterations, in both units; 0: off
    # Budgets that end a run early (a checkpoint is written when they are reached).
    max_steps: int | None = None  # iterations; the run's length with lr_unit "iteration"
    max_minutes: float | None = None
    seed: int = 0
    mixed_precision: str = "no"
    # Where the lower precision (bf16, fp16) is measured slower than fp32 at start (no bf16 units:
    # an AVX2-only CPU, a pre-Ampere GPU), train in fp32 and warn; false: the precision as asked.
    precision_fallback: bool = True
    # Speed options that leave fp32 numerics unchanged (see docs/speed.md). channels_last:
    # true, false, or "auto": the faster layout for the step's dtype on this device, measured at
    # start (gan_style.engine.kernels), which also picks the norms' precision in bf16/fp16 steps.
    channels_last: bool | Literal["auto"] = "auto"
    # The wide stride-1 3x3 and 4x4 convolutions of fp32 steps on the CPU (ResNet and StyleGAN2
    # networks) by Winograd's F(4x4, 3x3) and F(3x3, 4x4) (gan_style.nn.winograd): 4x fewer multiplications, ~3e-6 relative error
    # (direct: ~2e-6); with the fused C transforms also the 5x5 ones by F(4x4, 5x5): 6.25x fewer, ~1e-5.
    # "auto": where measured faster at start; false: PyTorch's direct convolutions throughout.
    # Unless false, the strided convolutions' weight gradients of those steps run by im2col where
    # timed faster for their shape at first use (gan_style.nn.strided), and in bf16 steps on a CPU
    # with AMX the stride-1 3x3 and 4x4 layers' forward and backward by tiles where so timed
    # (gan_style.nn.tiles).
    winograd: bool | Literal["auto"] = "auto"
    compile: bool = False
    # After each optimisation phase on the CPU, hand the C heap's free pages back to the system
    # (glibc's malloc_trim, gan_style.engine.memory): a lower peak for steps whose phases leave
    # large holes (the Swapping Autoencoder's default), page faults that cost time for the rest.
    trim_heap: bool = False
    # The opposite trade on the CPU: keep freed memory in the C heap for reuse instead of taking
    # large tensors from fresh pages the kernel zeroes (gan_style.engine.memory.keep_freed_memory;
    # process-wide, for the process's lifetime). Faster where steps allocate many large
    # temporaries (the Swapping Autoencoder: 0.57 of the time, 1.14x the peak memory, docs/speed.md);
    # it turns trim_heap off.
    keep_heap: bool = False
    # CPU tensors of 1 MB or more get the pages of freed ones, split or moved together by mremap
    # (Linux; gan_style.engine.memory.reuse_freed_pages, process-wide from the first CPU run on):
    # the kernel zeroes fresh pages only to reach a new peak, and the peak stays within an eighth
    # (at most 64 MB) of the live tensors' (the Swapping Autoencoder: 0.70-0.84 of the time, 0.93
    # of the peak; docs/speed.md, sessions l and q). false: PyTorch's allocator as it is.
    reuse_pages: bool = True
    # Where the instance norm runs by the fused C kernel (channels-last CPU steps): a ReLU or
    # LeakyReLU right after an instance norm or AdaIN is applied in the norm's own passes
    # (gan_style.engine.kernels.fuse_norm_activations), the same function with one pass over the
    # map less each way. false: the activations as separate modules.
    fuse_activations: bool = True
    # Cadence, in iterations (the reference's print_freq, display_freq, save_latest_freq).
    log_every: int = 100
    image_every: int = 400
    save_every: int = 5000
    keep_checkpoints: int = 2
    # Exponential moving average of the generators' weights (gan_style.engine.ema), used at
    # inference when present; 0: off, as in the CycleGAN/CUT references.
    ema_decay: float = 0.0
    ema_start_step: int = 0  # before it the average follows the weights
    # Metrics on held-out images (gan_style.evaluation) every eval_every iterations; 0: off. The
    # images are the first eval_images items of the dataset's test split (data.phase "test") when
    # there is one, else of the training set. FID is added when the Inception weights are found
    # (eval_inception_weights, or torch hub's cache). best.pt follows eval_track.
    eval_every: int = 0
    eval_images: int = 16
    eval_metrics: tuple[str, ...] = ("swd", "ssim")
    eval_track: str = "swd"  # a key of the results (swd, ssim, fid, kid); ssim is higher-is-better
    eval_inception_weights: str | None = None

    def __post_init__(self) -> None:
        for name, options in (("lr_policy", LR_POLICIES), ("lr_unit", LR_UNITS), ("mixed_precision", MIXED_PRECISION)):
            _check(getattr(self, name) in options, name, getattr(self, name), f"one of {', '.join(options)}")
        for name in ("batch_size", "epoch_count", "lr_decay_iters", "log_every", "image_every", "save_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        for name in ("n_epochs", "n_epochs_decay", "lr_decay_start", "lr_warmup_steps"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        if self.total_epochs < 1:
            raise ConfigError(f"train.n_epochs + train.n_epochs_decay must be >= 1, got {self.n_epochs} + {self.n_epochs_decay}")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "None or >= 1")
        _check(self.max_minutes is None or (_finite(self.max_minutes) and self.max_minutes > 0), "max_minutes", self.max_minutes, "None or a finite number > 0")
        _check(self.lr_step_size is None or self.lr_step_size >= 1, "lr_step_size", self.lr_step_size, "None or >= 1")
        _check(_finite(self.lr_gamma) and self.lr_gamma > 0, "lr_gamma", self.lr_gamma, "a finite number > 0")
        _check(_finite(self.lr_inverse_k) and self.lr_inverse_k >= 0, "lr_inverse_k", self.lr_inverse_k, "a finite number >= 0")
        _check(_finite(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "0 (off) or a number in (0, 1), e.g. 0.999")
        _check(self.channels_last in (True, False, "auto"), "channels_last", self.channels_last, "true, false or auto (measured at start)")
        _check(self.winograd in (True, False, "auto"), "winograd", self.winograd, "true, false or auto (measured at start)")
        _check(self.ema_start_step >= 0, "ema_start_step", self.ema_start_step, ">= 0")
        _check(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", self.eval_every, "0 (off) or a number of iterations >= 1")
        _check(isinstance(self.eval_images, int) and self.eval_images >= 2, "eval_images", self.eval_images, "an integer >= 2")
        _check(len(self.eval_metrics) > 0 and set(self.eval_metrics) <= set(EVAL_METRICS), "eval_metrics", self.eval_metrics,
               f"a non-empty list from {', '.join(EVAL_METRICS)}")
        _check(self.eval_track in (*self.eval_metrics, "fid"), "eval_track", self.eval_track,
               f"one of train.eval_metrics ({', '.join(self.eval_metrics)}) or fid")
        ms = self.lr_milestones
        _check(min(ms, default=1) >= 1 and all(a < b for a, b in pairwise(ms)), "lr_milestones", ms, "strictly increasing integers >= 1")
        if self.lr_policy == "multistep":
            _check(len(ms) > 0, "lr_milestones", ms, "non-empty for lr_policy multistep")
        if self.lr_unit == "epoch":
            _check(self.epoch_count <= self.total_epochs, "epoch_count", self.epoch_count, f"<= n_epochs + n_epochs_decay ({self.total_epochs}), the last epoch")
            if self.lr_policy == "cosine":  # torch's CosineAnnealingLR(T_max=n_epochs) divides by it
                _check(self.n_epochs >= 1, "n_epochs", self.n_epochs, ">= 1 for lr_policy cosine (its period)")
            return
        # The iteration unit: the run and its schedule are said in iterations.
        if self.max_steps is None:
            raise ConfigError("train.max_steps must be set (the run's length in iterations) when train.lr_unit is iteration, got None")
        _check(self.lr_policy != "plateau", "lr_policy", self.lr_policy, "an iteration policy (plateau steps at epoch ends: use lr_unit epoch)")
        if self.lr_policy == "step":
            _check(self.lr_step_size is not None, "lr_step_size", self.lr_step_size, "set (in iterations) for lr_policy step with lr_unit iteration")
        if self.lr_policy == "linear":
            _check(self.lr_decay_start <= self.max_steps, "lr_decay_start", self.lr_decay_start, f"<= train.max_steps ({self.max_steps})")

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay

    @property
    def last_epoch(self) -> int | None:
        """The number of the last epoch the run trains: with the epoch unit n_epochs + n_epochs_decay
        whatever epoch_count (the reference's ``range(epoch_count, n_epochs + n_epochs_decay + 1)``,
        so the linear rule never goes below zero); None with the iteration unit (max_steps ends it)."""
        return self.total_epochs if self.lr_unit == "epoch" else None
