"""Learning-rate policies of the CycleGAN family, stepped once per epoch."""

from __future__ import annotations

from torch.optim import Optimizer, lr_scheduler

from gan_style.engine.config import TrainConfig


def build_scheduler(optimizer: Optimizer, config: TrainConfig) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    """linear: constant for ``n_epochs``, then linearly to zero over ``n_epochs_decay`` (the
    CycleGAN paper, Sec. 7.1); step: x0.1 every ``lr_decay_iters`` epochs; plateau: x0.2 when the
    monitored value stalls; cosine: cosine annealing over ``n_epochs``."""
    if config.lr_policy == "linear":

        def linear(epoch: int) -> float:
            return 1.0 - max(0, epoch + config.epoch_count - config.n_epochs) / float(config.n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=linear)
    if config.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_iters, gamma=0.1)
    if config.lr_policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if config.lr_policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.n_epochs, eta_min=0)
    raise ValueError(f"unknown lr_policy {config.lr_policy!r}")
