"""Exponential moving averages of network weights (``train.ema_decay``).

Generators of the StyleGAN family are evaluated with an average of their recent weights, which is
smoother than the last iterate (Karras et al. 2018, Sec. 5.2; imaginaire and joliGEN offer it for
every generator). The averages are kept in float32 whatever the training precision, updated after
every iteration, saved in the checkpoint and used at inference when present. Before
``train.ema_start_step`` they simply follow the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class WeightAverage:
    def __init__(self, nets: Mapping[str, nn.Module], decay: float, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay, self.start_step = decay, start_step
        self.averages: dict[str, dict[str, Tensor]] = {
            name: {key: value.detach().float().clone() for key, value in net.state_dict().items()} for name, net in nets.items()
        }

    @torch.no_grad()
    def update(self, nets: Mapping[str, nn.Module], step: int) -> None:
        """Fold in the weights after ``step`` iterations: avg <- decay * avg + (1 - decay) * w."""
        weight = 1.0 - self.decay if step >= self.start_step else 1.0
        averaged, current = [], []
        for name, average in self.averages.items():
            for key, value in nets[name].state_dict().items():
                if value.is_floating_point():
                    averaged.append(average[key])
                    current.append(value.detach().float())
                else:  # counters: the latest value
                    average[key].copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict[str, Any]:
        return {name: dict(average) for name, average in self.averages.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        for name, average in self.averages.items():
            for key, value in state[name].items():
                average[key].copy_(value)
