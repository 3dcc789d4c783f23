"""The trainer's own options: schedule, budget, precision, logging and checkpoint cadence."""

from __future__ import annotations

from dataclasses import dataclass

LR_POLICIES = ("linear", "step", "plateau", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    batch_size: int = 1
    # Epoch schedule of the CycleGAN family: n_epochs at the initial learning rate, then
    # n_epochs_decay more with the policy below. epoch_count is the number of the first epoch.
    n_epochs: int = 100
    n_epochs_decay: int = 100
    epoch_count: int = 1
    lr_policy: str = "linear"
    lr_decay_iters: int = 50  # step policy: multiply by 0.1 every lr_decay_iters epochs
    # Budgets that end a run early (a checkpoint is written when they are reached).
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    mixed_precision: str = "no"
    # Speed options that leave fp32 numerics unchanged (see README, "Speed").
    channels_last: bool = True
    compile: bool = False
    # Cadence, in iterations (the reference's print_freq, display_freq, save_latest_freq).
    log_every: int = 100
    image_every: int = 400
    save_every: int = 5000
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"train.lr_policy must be one of {', '.join(LR_POLICIES)}, got {self.lr_policy!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")

    @property
    def total_epochs(self) -> int:
        return self.n_epochs + self.n_epochs_decay
