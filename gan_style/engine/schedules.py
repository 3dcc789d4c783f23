"""Learning-rate schedules as pure functions of progress.

A schedule maps ``(step, epoch)`` (iterations done, current epoch number) to the factor of each
optimiser's base learning rate for the next iteration. It holds no state, so a run resumes its
schedule exactly from the checkpointed step and epoch.

``train.lr_unit`` says what the policy counts: ``epoch`` (the CycleGAN/CUT reference, whose torch
schedulers are stepped at each epoch end; ``t`` = epoch ends = ``epoch - epoch_count``) or
``iteration`` (``t`` = ``step``). A linear warm-up over the first ``lr_warmup_steps`` iterations
multiplies either.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence

from torch.optim import Optimizer

from gan_style.engine.config import TrainConfig

Schedule = Callable[[int, int], float]

# ReduceLROnPlateau as the reference builds it (networks.get_scheduler): mode min, factor 0.2,
# threshold 0.01 (relative), patience 5, cooldown 0.
PLATEAU_FACTOR, PLATEAU_PATIENCE = 0.2, 5


def linear_decay(t: int, start: int, length: int) -> float:
    """The reference's ``lambda_rule`` (CycleGAN paper, Sec. 7.1): 1 while ``t <= start``, then
    linearly towards zero, ``1 / (length + 1)`` at ``t = start + length``; 0 after (clamped)."""
    return max(0.0, 1.0 - max(0, t - start) / (length + 1))


def cosine(t: int, period: int) -> float:
    """CosineAnnealingLR(T_max=period, eta_min=0) in closed form, periodic past ``period`` as torch."""
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


def plateau(epoch_ends: int) -> float:
    """ReduceLROnPlateau fed the metric 0 at every epoch end (the reference monitors nothing).

    The first call improves on best = inf; every later one fails the relative threshold
    (0 < 0 * 0.99 is false), so after ``patience + 1`` bad calls the lr is multiplied by 0.2 and the
    count restarts: reductions at calls 1 + 6k, k >= 1. (torch also skips a reduction smaller than
    eps = 1e-8 in absolute lr, below any useful lr; not modelled.)"""
    return PLATEAU_FACTOR ** (max(0, epoch_ends - 1) // (PLATEAU_PATIENCE + 1))


def warmup(step: int, steps: int) -> float:
    """Linear warm-up: ``(step + 1) / (steps + 1)`` for the first ``steps`` iterations, then 1."""
    return min(1.0, (step + 1) / (steps + 1))


def _policy(config: TrainConfig) -> Callable[[int], float]:
    """The policy's factor as a function of ``t``, counted in ``config.lr_unit``."""
    c, iteration = config, config.lr_unit == "iteration"
    if c.lr_policy == "linear":
        if iteration:  # the reference's rule, iterations for epochs: lr_decay_start at the full lr, then to max_steps
            length = (c.max_steps or 0) - c.lr_decay_start
            return lambda t: linear_decay(t + 1, c.lr_decay_start, length)
        return lambda t: linear_decay(t + c.epoch_count, c.n_epochs, c.n_epochs_decay)  # the epoch number
    if c.lr_policy == "step":  # StepLR; MUNIT: x0.5 every 100,000 iterations
        size = c.lr_step_size or c.lr_decay_iters
        return lambda t: c.lr_gamma ** (t // size)
    if c.lr_policy == "multistep":  # MultiStepLR
        return lambda t: c.lr_gamma ** bisect_right(c.lr_milestones, t)
    if c.lr_policy == "cosine":
        if iteration:
            steps = c.max_steps or 1
            return lambda t: cosine(min(t, steps), steps)
        return lambda t: cosine(t, c.n_epochs)  # the reference: T_max = n_epochs
    if c.lr_policy == "inverse":  # AdaIN reference (train.py, adjust_learning_rate): lr / (1 + k t)
        return lambda t: 1.0 / (1.0 + c.lr_inverse_k * t)
    if c.lr_policy == "plateau":
        return plateau
    if c.lr_policy == "constant":
        return lambda t: 1.0
    raise ValueError(f"unknown lr_policy {c.lr_policy!r}")


def build_schedule(config: TrainConfig) -> Schedule:
    """``schedule(step, epoch)``: the base-lr factor for the next iteration, after ``step``
    iterations, in epoch number ``epoch`` (starting at ``config.epoch_count``)."""
    policy, iteration, warm = _policy(config), config.lr_unit == "iteration", config.lr_warmup_steps

    def schedule(step: int, epoch: int) -> float:
        factor = policy(step if iteration else epoch - config.epoch_count)
        return factor * warmup(step, warm) if warm else factor

    return schedule


def set_lr(optimizer: Optimizer, base_lrs: Sequence[float], factor: float) -> None:
    """Set each param group's lr to its base lr times ``factor`` (as LambdaLR does)."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor
