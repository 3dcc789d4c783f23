"""What a method tells the generic trainer: its networks, optimisers and training phases.

The trainer (``gan_style.engine``) knows no method by name. A method is a small class that

* builds its networks from the shared blocks (``build_networks``),
* says which networks each optimiser updates (``optimizers``),
* lists the phases of one training iteration (``phases``): each phase computes named losses for one
  optimiser; the trainer sums them, back-propagates, and steps that optimiser. Networks the phase
  does not train are frozen (no weight gradients) while it runs,
* builds its training data (``build_dataset``) and, for benchmarks, a synthetic batch,
* says which network translates at test time (``inference_network``).

Intermediate results travel from one phase to the next in an explicit ``carry`` dict (for
instance CycleGAN's fakes, computed in the generator phase and judged in the discriminator phase),
never as attributes stashed on the method or the networks between calls. State that must survive
across iterations and be checkpointed (CycleGAN's image pools) is returned by ``state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from gan_style.engine.config import TrainConfig


@dataclass
class MethodConfig:
    """Fields every method has; a method's config subclasses this."""

    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser: the networks whose parameters it updates and its hyper-parameters."""

    name: str
    networks: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    kind: str = "adam"  # adam | adamw

    def __post_init__(self) -> None:
        from gan_style.config import ConfigError

        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate of optimiser {self.name!r} must be a positive number, got {self.lr}; set the method's lr option (e.g. --set lr=2e-4)")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"the betas of optimiser {self.name!r} must lie in [0, 1), got {self.betas}; check the beta1/beta2 options")
        if self.kind not in ("adam", "adamw"):
            raise ConfigError(f"optimiser {self.name!r}: unknown kind {self.kind!r}; use adam or adamw")


@dataclass
class StepContext:
    """What a phase sees: the networks (those it trains are the DDP-wrapped ones), the carry from
    earlier phases of this iteration, and the iteration counter (for lazy regularisers)."""

    nets: Mapping[str, nn.Module]
    carry: dict[str, Any]
    iteration: int
    epoch: int


@dataclass
class StepOutput:
    """Named loss terms (summed by the trainer, each already weighted), values to pass on to later
    phases, and extra scalars to log that are not optimised (accuracies, norms)."""

    losses: dict[str, Tensor]
    carry: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Tensor | float] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """One optimisation step inside a training iteration."""

    name: str
    optimizer: str
    step: Callable[[StepContext, dict[str, Any]], StepOutput]


class Method:
    """Base class of every training method. Subclasses set ``name``, ``Config`` and ``presets``."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: named sets of overrides (nested dicts), e.g. {"paper": {...}, "demo": {...}}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the preset used when a recipe names none
    default_preset: ClassVar[str | None] = None

    def __init__(self, config: MethodConfig):
        self.config = config

    # -- what the trainer calls ---------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> list[OptimizerSpec]:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def forward(self, ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any] | None:
        """Optional shared forward pass, run before the phases with every trained network
        wrapped and differentiable; its result starts the carry. Methods whose phases reuse one
        forward (CUT updates D on G's output, then G on the same graph) put it here; the default
        does nothing."""
        return None

    def build_dataset(self, seed: int) -> torch.utils.data.Dataset:
        """The training set; it may define ``set_epoch(epoch)`` and ``shuffle`` (default True)."""
        raise NotImplementedError

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """A batch of random images shaped like ``build_dataset``'s, for benchmarks."""
        raise NotImplementedError

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any]) -> dict[str, Tensor]:
        """Images to show (name -> (B, C, H, W) in [-1, 1]), from the last iteration's carry."""
        return {}

    def inference_network(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> nn.Module:
        """The image -> image network used by ``gan-style translate``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Training state other than networks and optimisers (e.g. image pools)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def config_from_overrides(method_cls: type[Method], preset: str | None, overrides: Mapping[str, Any]) -> MethodConfig:
    """Dataclass defaults < preset < overrides (nested or dotted keys)."""
    from gan_style.config import ConfigError, apply_overrides

    config = method_cls.Config()
    preset = preset if preset is not None else method_cls.default_preset
    if preset:
        if preset not in method_cls.presets:
            known = ", ".join(sorted(method_cls.presets)) or "none"
            raise ConfigError(f"{method_cls.name} has no preset '{preset}'; known presets: {known}")
        config = apply_overrides(config, method_cls.presets[preset])
    return apply_overrides(config, overrides)

