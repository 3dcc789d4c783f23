"""The method contract: what a training method tells the generic trainer, and what it lends back.

The trainer (``gan_style.engine.trainer``) knows no method by name. A method is one class that

* builds its networks from the shared blocks (``build_networks``);
* says which networks each optimiser updates (``optimizers``). Networks no optimiser owns (a
  frozen VGG) stay frozen for the whole run;
* lists the phases of an iteration (``phases``). A phase computes named losses for one optimiser:
  the trainer sums them, back-propagates once and steps that optimiser once, with the networks of
  the other optimisers frozen. A phase declares when it runs (every iteration, on alternate
  iterations, or after every n-th run of another phase, as StyleGAN2's lazy R1); one that does not
  run costs nothing, and one that returns no loss steps nothing. Its scalars are logged under
  ``loss/<phase>/<name>``;
* may run one shared forward before the phases (``forward``; CUT updates D on G's output, then G
  on the same graph);
* builds its training data (``build_dataset``) and, for benchmarks, a synthetic batch;
* says how inference runs (``translator``): what it takes besides the image (a style image, a
  mixing weight ...) and the function that maps images to images. ``gan-style translate``, the
  Python API (``gan_style.load``) and the exporters use it.

Intermediate results travel from one phase to the next in an explicit ``carry`` dict, never as
attributes stashed on the method or the networks. Randomness comes from named generators the
engine lends through ``StepContext.rng`` (one stream per name and process, checkpointed and
resumed); state that must survive iterations (CycleGAN's image pools) is the method's
``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from gan_style.engine.config import TrainConfig

if TYPE_CHECKING:
    from gan_style.engine.random import RandomStreams

Batch = Mapping[str, Any]
ITERATION = "iteration"


@dataclass
class MethodConfig:
    """Fields every method has; a method's config subclasses this."""

    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser: the networks whose parameters it updates and its hyper-parameters. ``lr`` is
    the base rate that the schedule (``train.lr_policy``) scales."""

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
    """What a phase sees: the networks (those it trains are the DDP-wrapped ones), the carry of
    earlier phases of this iteration, where the run stands, and the engine's services."""

    nets: Mapping[str, nn.Module]
    carry: dict[str, Any]
    iteration: int  # iterations done before this one
    epoch: int
    rank: int = 0
    world_size: int = 1
    streams: RandomStreams | None = None

    def rng(self, name: str) -> torch.Generator:
        """This process's random stream ``name`` (CPU), checkpointed and resumed by the engine."""
        if self.streams is None:
            raise RuntimeError("this StepContext has no random streams; the trainer lends them")
        return self.streams[name]


@dataclass
class StepOutput:
    """Named loss terms (summed by the trainer, each already weighted), values to pass on to later
    phases, and extra scalars to log that are not optimised (accuracies, norms)."""

    losses: dict[str, Tensor]
    carry: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Tensor | float] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """One optimisation step inside an iteration, and when it runs.

    ``of`` is what is counted: ``"iteration"`` (iterations done before this one) or the name of
    another phase (its runs so far, this iteration's included; then the phase runs only right after
    that phase). The phase runs when the count ``k`` (0-based) has ``k % every == offset``:

    * ``Phase("G", "G", step)``: every iteration;
    * ``every=2, offset=0`` and ``every=2, offset=1``: two phases on alternate iterations;
    * ``Phase("D_reg", "D", r1_step, every=16, of="D")``: after every 16th D step, the first one
      included (StyleGAN2's lazy regularisation, Karras et al. 2020, appendix B).
    """

    name: str
    optimizer: str
    step: Callable[[StepContext, Batch], StepOutput]
    every: int = 1
    of: str = ITERATION
    offset: int = 0

    def __post_init__(self) -> None:
        if self.every < 1 or not 0 <= self.offset < self.every:
            raise ValueError(f"phase {self.name!r}: needs every >= 1 and 0 <= offset < every, got every={self.every}, offset={self.offset}")
        if self.of == self.name:
            raise ValueError(f"phase {self.name!r} cannot count its own runs")

    def due(self, iteration: int, runs: Mapping[str, int], ran: set[str]) -> bool:
        """Whether the phase runs now, given the runs of every phase so far (this iteration's
        included) and the phases that already ran in this iteration."""
        if self.of == ITERATION:
            count = iteration
        elif self.of in ran:
            count = runs[self.of] - 1
        else:
            return False
        return count % self.every == self.offset


@dataclass(frozen=True)
class InputSpec:
    """One input of inference besides the images: its keyword, kind and meaning."""

    name: str
    kind: str  # image | float | int
    help: str
    required: bool = False


@dataclass(frozen=True)
class Translator:
    """Inference as a method defines it. ``bind(**inputs)`` returns the function that maps images
    (B, C, H, W) in [-1, 1] to images, with ``inputs`` (see ``inputs``) fixed; sides must be
    multiples of ``size_multiple`` (callers pad). ``local`` says that the function is made of local
    operations, so that tiles of a large image give the whole-image result away from their seams."""

    bind: Callable[..., Callable[[Tensor], Tensor]]
    size_multiple: int = 4
    inputs: tuple[InputSpec, ...] = ()
    description: str = ""
    local: bool = True

    @classmethod
    def of_network(cls, network: nn.Module, description: str = "") -> Translator:
        """The usual case: one image -> image network with no further inputs."""
        return cls(lambda: network, getattr(network, "size_multiple", 4), (), description)

    def check_inputs(self, given: Mapping[str, Any]) -> None:
        from gan_style.errors import UserError

        known = {spec.name for spec in self.inputs}
        unknown = sorted(set(given) - known)
        if unknown:
            accepted = ", ".join(sorted(known)) or "none"
            raise UserError(f"unknown inference input(s) {', '.join(unknown)}; {self.description or 'this model'} accepts: {accepted}")
        missing = [spec.name for spec in self.inputs if spec.required and given.get(spec.name) is None]
        if missing:
            example = " ".join(f"--with {name}=..." for name in missing)
            raise UserError(f"{self.description or 'this model'} needs the input(s) {', '.join(missing)}: "
                            f"gan-style translate {example}, or model.translate(images, {missing[0]}=...) in Python")


class Method:
    """Base class of every training method. Subclasses set ``name``, ``Config`` and ``presets``."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: named sets of overrides (nested dicts), e.g. {"paper": {...}, "demo": {...}}; every method
    #: has "smoke" (reduced widths on the built-in demo data, for tests and CI)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the preset used when a recipe names none
    default_preset: ClassVar[str | None] = None
    #: networks whose exponential moving average (train.ema_decay) inference uses
    ema_networks: ClassVar[tuple[str, ...]] = ()
    #: the batch ``gan-style bench`` times unless told otherwise (the reference's timing unit)
    bench_batch_size: ClassVar[int] = 1
    #: the network family ``train.channels_last=auto`` times to choose the memory format and
    #: norm kernels (gan_style.engine.kernels.PROBES: "resnet" or "stylegan2")
    kernel_probe: ClassVar[str] = "resnet"
    #: directions ``translator`` accepts
    directions: ClassVar[tuple[str, ...]] = ("AtoB",)

    def __init__(self, config: MethodConfig):
        self.config = config

    # -- what the trainer calls ---------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> list[OptimizerSpec]:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def forward(self, ctx: StepContext, batch: Batch) -> dict[str, Any] | None:
        """Optional shared forward pass, run before the phases with every trained network
        wrapped and differentiable; its result starts the carry. The default does nothing."""
        return None

    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        """The training set; it may define ``set_epoch(epoch)`` and ``shuffle`` (default True).
        ``world_size`` is the number of processes that share each global batch."""
        raise NotImplementedError

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """A batch of random images shaped like ``build_dataset``'s, for benchmarks."""
        raise NotImplementedError

    def visuals(self, batch: Batch, carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        """Images to show (name -> (B, C, H, W) in [-1, 1]), from the last iteration's carry; the
        trainer also lends the networks (in no-grad mode) for images a step does not make, such
        as MUNIT's translations with a fixed set of random styles."""
        return {}

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        """How ``nets`` translate at test time, in ``direction`` (one of ``directions``)."""
        raise NotImplementedError

    def functions(self, nets: Mapping[str, nn.Module]) -> dict[str, Callable[..., Any]]:
        """Further inference functions the Python API offers as ``model.<name>`` (the Swapping
        Autoencoder's ``encode`` and ``decode``), on tensors in [-1, 1]. Default: none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Training state other than networks, optimisers and random streams (e.g. image pools)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    # -- helpers for subclasses ------------------------------------------------------------------
    def check_direction(self, direction: str) -> None:
        from gan_style.errors import UserError

        if direction not in self.directions:
            if self.directions == ("AtoB",):
                raise UserError(f"--direction {direction}: {self.name} translates one way (A to B); for B to A train another model with --set data.direction=BtoA")
            raise UserError(f"--direction {direction}: {self.name} translates {' or '.join(self.directions)}")


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
