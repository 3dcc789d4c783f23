"""The one generic trainer: it runs any ``Method`` through ``accelerate``.

It owns everything a method should not have to write: devices, DDP and mixed precision (through
``accelerate``), optimisers and learning-rate schedules, freezing the networks a phase does not
train, the data order (sharded across processes, reproducible per epoch), tensorboard scalars
and image grids, a progress bar, and full checkpoint/resume (networks, optimisers, schedulers,
the method's own state such as image pools, RNG states and counters).

Exact resume: the data order of an epoch is a permutation drawn from (seed, epoch); each item's
augmentation randomness comes from (seed, epoch, index) inside the dataset; the global RNG states
and the position inside the epoch are checkpointed. A run stopped after step k and resumed gives
the same losses at step k + 1, k + 2, ... as a run that was never stopped (tested on CPU).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gan_style.config import dump_yaml, to_dict
from gan_style.data.sharding import epoch_order, shard_batches
from gan_style.engine import optimizers
from gan_style.engine.checkpoint import (
    FORMAT,
    LATEST,
    atomic_link,
    atomic_torch_save,
    load_run_checkpoint,
    rank_file,
    read_weights,
    remove_orphans,
    rng_state,
    set_rng_state,
    snapshot_name,
    snapshots,
)
from gan_style.engine.contract import Method, OptimizerSpec, StepContext
from gan_style.engine.ema import WeightAverage
from gan_style.engine.kernels import (
    STEP_DTYPES,
    KernelChoice,
    PrecisionChoice,
    choose_kernels,
    choose_precision,
    fuse_norm_activations,
    set_conv_kernel,
    set_norm_kernel,
    to_channels_last,
)
from gan_style.engine.memory import HeapTrimmer, keep_freed_memory, release_freed_pages, reuse_freed_pages
from gan_style.engine.random import RandomStreams
from gan_style.engine.schedules import build_schedule, set_lr
from gan_style.errors import CheckpointError
from gan_style.nn.layers import WeightCasts, weight_casts

log = logging.getLogger(__name__)
#: The checkpoint of the best evaluation so far (train.eval_every), beside latest.pt.
BEST = "best.pt"


@dataclass
class Progress:
    """Where the run stands. ``epoch`` is the reference's epoch number (starting at
    ``train.epoch_count``), ``batch_in_epoch`` the number of batches of it already done."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    phase_runs: dict[str, int] = field(default_factory=dict)  # how often each phase has run


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch


def _use_cpu() -> bool:
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def _measured_on_main(state: Any, measure: Callable[[], Any]) -> Any:
    """``measure()`` run by the main process of ``state`` (accelerate's PartialState or an
    Accelerator), its result on every process: DDP replicas must agree on kernels and precision."""
    result = [measure() if state.is_main_process else None]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(result)
    return result[0]


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator for this process. Without CUDA it is told to use the CPU: accelerate then
    sets up gloo DDP when launched with several processes (``accelerate launch --multi_gpu
    --num_processes 2`` or ``torchrun``), instead of silently running each process alone."""
    from accelerate.state import AcceleratorState

    use_cpu = _use_cpu()
    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision:
        # accelerate keeps one precision per process; a second trainer in the same process
        # (a notebook, the test-suite) may ask for another. The process group is kept.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=use_cpu)


class Trainer:
    def __init__(self, method: Method, run_dir: str | Path | None = None, accelerator: Accelerator | None = None, show_progress: bool = True):
        self.method = method
        self.config = method.config.train
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if accelerator is None:
            self.precision = self._choose_precision()
            accelerator = make_accelerator(self.precision.mixed_precision)
        else:  # the caller's precision, as it is
            self.precision = PrecisionChoice(accelerator.mixed_precision, accelerator.mixed_precision)
        self.accelerator = accelerator
        self.device = self.accelerator.device
        self.show_progress = show_progress and self.accelerator.is_main_process
        self.progress = Progress(epoch=self.config.epoch_count)
        # Same seed on every process: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(self.config.seed)
        # before the kernel probe, which then measures under the run's allocator
        if self.config.keep_heap and self.device.type == "cpu" and not keep_freed_memory():
            log.warning("train.keep_heap: the C library is not glibc; freed memory is handled as it is by default")
        if self.config.reuse_pages and self.device.type == "cpu":
            reuse_freed_pages()
        networks = method.build_networks()
        self.kernels = self._choose_kernels()
        trim = self.config.trim_heap and not self.config.keep_heap  # keeping the heap is the opposite choice
        self._trim_heap = HeapTrimmer() if trim and self.device.type == "cpu" else None
        self.channels_last = self.kernels.channels_last
        self._raw: dict[str, nn.Module] = {}
        self.fused_activations = 0  # norm + activation pairs run as one (train.fuse_activations)
        for name, net in networks.items():
            net = net.to(self.device)
            if self.channels_last:
                to_channels_last(net)
            set_norm_kernel(net, self.kernels.norm_kernel)
            if self.config.fuse_activations and self.kernels.norm_kernel == "fused":
                self.fused_activations += fuse_norm_activations(net)
            set_conv_kernel(net, self.kernels.conv_kernel, self.kernels.weight_gradient, self.kernels.narrow)
            self._raw[name] = net
        self.optimizer_specs = {spec.name: spec for spec in method.optimizers()}
        self._check_optimizer_specs()
        # Networks no optimiser owns (a frozen VGG) stay frozen for the whole run.
        self._owned = {n for spec in self.optimizer_specs.values() for n in spec.networks}
        for name, net in self._raw.items():
            if name not in self._owned:
                net.requires_grad_(False)
        optimizers = {name: self._build_optimizer(spec) for name, spec in self.optimizer_specs.items()}
        trained_names = sorted(self._owned)
        prepared = self.accelerator.prepare(*[self._raw[n] for n in trained_names], *optimizers.values())
        self.nets: dict[str, nn.Module] = dict(self._raw)
        self.nets.update(zip(trained_names, prepared[: len(trained_names)]))
        self.optimizers = dict(zip(optimizers.keys(), prepared[len(trained_names) :]))
        if self.config.compile:
            self.nets = {name: torch.compile(net) for name, net in self.nets.items()}
        # A pure function of (step, epoch): resuming restores the schedule with the progress.
        self.schedule = build_schedule(self.config)
        self.phases = method.phases()
        self._check_phases()
        self.streams = RandomStreams(self.config.seed, self.accelerator.process_index)
        self.ema: WeightAverage | None = None
        if self.config.ema_decay > 0:
            if not method.ema_networks:
                raise ValueError(f"train.ema_decay is set but {method.name} names no networks to average (ema_networks)")
            self.ema = WeightAverage({n: self._raw[n] for n in method.ema_networks}, self.config.ema_decay, self.config.ema_start_step)
        self._writer = None
        self._saved_step: int | None = None
        self._eval_set: tuple[Tensor, Tensor] | None = None  # (sources, real), built at the first evaluation
        self._best: dict[str, float] | None = None  # {"value": ..., "step": ...} of the tracked metric

    # -- construction helpers ------------------------------------------------------------------
    def _check_optimizer_specs(self) -> None:
        for spec in self.optimizer_specs.values():
            unknown = [n for n in spec.networks if n not in self._raw]
            if unknown:
                raise ValueError(f"optimizer {spec.name!r} names unknown networks {unknown}; networks: {sorted(self._raw)}")

    def _check_phases(self) -> None:
        names = [phase.name for phase in self.phases]
        for phase in self.phases:
            if phase.optimizer not in self.optimizer_specs:
                raise ValueError(f"phase {phase.name!r} names unknown optimizer {phase.optimizer!r}; optimizers: {sorted(self.optimizer_specs)}")
            if phase.of != "iteration" and phase.of not in names[: names.index(phase.name)]:
                raise ValueError(f"phase {phase.name!r} counts the runs of {phase.of!r}, which must be an earlier phase of {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")

    def _build_optimizer(self, spec: OptimizerSpec) -> torch.optim.Optimizer:
        params = [p for name in spec.networks for p in self._raw[name].parameters()]
        # fused: one kernel per parameter tensor for the whole Adam update. On the CPU it is 4x
        # faster than foreach, which falls back to a loop of element-wise ops there (CUT's
        # generator, 11.4 M parameters: 8 vs 35 ms per step); elsewhere foreach.
        vectorised = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        kwargs = dict(lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, **vectorised)
        if spec.kind == "adam":
            return optimizers.Adam(params, **kwargs)
        if spec.kind == "adamw":
            return optimizers.AdamW(params, **kwargs)
        raise ValueError(f"unknown optimizer kind {spec.kind!r}")

    def unwrapped(self, name: str) -> nn.Module:
        return self._raw[name]

    @property
    def networks(self) -> dict[str, nn.Module]:
        """The plain (unwrapped) networks."""
        return dict(self._raw)

    # -- one iteration -------------------------------------------------------------------------
    def context(self, nets: Mapping[str, nn.Module], carry: dict[str, Any]) -> StepContext:
        return StepContext(
            nets, carry, self.progress.step, self.progress.epoch,
            self.accelerator.process_index, self.accelerator.num_processes, self.streams,
        )

    def _trainable(self, names: set[str]) -> None:
        for name in self._owned:
            self._raw[name].requires_grad_(name in names)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Run the phases due in this iteration on ``batch`` and count the iteration; return the
        detached loss terms and logs, named by phase (``loss/<phase>/<term>``, ``<phase>/<scalar>``).
        In a mixed-precision step each convolution weight is cast once per version, not once per
        autocast region (``gan_style.nn.layers.weight_casts``)."""
        dtype = STEP_DTYPES.get(self.precision.mixed_precision)
        if dtype is None or self.config.compile:
            return self._run_step(batch, None)
        with weight_casts(dtype) as casts:
            return self._run_step(batch, casts)

    def _run_step(self, batch: Mapping[str, Any], casts: WeightCasts | None) -> dict[str, Tensor]:
        batch = _to_device(batch, self.device, self.channels_last)
        progress = self.progress
        factor = self.schedule(progress.step, progress.epoch)
        for name, optimizer in self.optimizers.items():
            set_lr(optimizer, [self.optimizer_specs[name].lr], factor)
        logs: dict[str, Tensor] = {}
        with self.accelerator.autocast():
            carry: dict[str, Any] = dict(self.method.forward(self.context(self.nets, {}), batch) or {})
        ran: set[str] = set()
        for phase in self.phases:
            if not phase.due(progress.step, progress.phase_runs, ran):
                continue  # a phase that does not run costs nothing
            trained = set(self.optimizer_specs[phase.optimizer].networks)
            self._trainable(trained)
            # Networks this phase trains are the (DDP-)wrapped ones; the others are used plain,
            # frozen, so DDP expects no gradient for them.
            view = {name: (self.nets[name] if name in trained else self._raw[name]) for name in self._raw}
            optimizer = self.optimizers[phase.optimizer]
            optimizer.zero_grad(set_to_none=True)
            with self.accelerator.autocast():
                out = phase.step(self.context(view, carry), batch)
            if out.losses:  # one backward and one optimiser step per phase that has losses
                self.accelerator.backward(sum(out.losses.values()))
                optimizer.step()
                if casts is not None:  # the stepped weights' casts are stale (their versions moved)
                    casts.drop_stale()
                # the gradients are spent: free them now, not at this optimiser's next phase, so
                # that the next phase's activations do not sit on top of them
                optimizer.zero_grad(set_to_none=True)
                if self._trim_heap is not None:  # the phase's activations are freed now
                    self._trim_heap()
            carry.update(out.carry)
            progress.phase_runs[phase.name] = progress.phase_runs.get(phase.name, 0) + 1
            ran.add(phase.name)
            for key, value in out.losses.items():
                logs[f"loss/{phase.name}/{key}"] = value.detach()
            for key, value in out.logs.items():
                logs[f"{phase.name}/{key}"] = value.detach() if isinstance(value, Tensor) else torch.tensor(value)
        self._trainable(self._owned)  # between steps: trained networks trainable, the others frozen
        if self.ema is not None:
            self.ema.update(self._raw, progress.step)
        self._last_batch, self._last_carry = batch, carry
        progress.step += 1
        return logs

    def _kernel_settings(self) -> tuple[bool | None, str, bool | None]:
        """(layout, probe family, winograd) for gan_style.engine.kernels; None: measured."""
        layout = None if self.config.channels_last == "auto" else bool(self.config.channels_last)
        winograd = None if self.config.winograd == "auto" else bool(self.config.winograd)
        return layout, self.method.kernel_probe, winograd

    def _choose_precision(self) -> PrecisionChoice:
        """train.mixed_precision, or fp32 with a warning where the lower precision's training pass
        was measured slower (no bf16 units: PyTorch emulates bf16) and train.precision_fallback is
        on. Chosen before the Accelerator exists (its precision is fixed when it is made): the
        main process measures, through accelerate's process state, and every process follows."""
        requested = self.config.mixed_precision
        if requested not in STEP_DTYPES or not self.config.precision_fallback:
            return PrecisionChoice(requested, requested)
        from accelerate import PartialState

        state = PartialState(cpu=_use_cpu())
        precision = _measured_on_main(state, lambda: choose_precision(state.device, requested, *self._kernel_settings()))
        if precision.fell_back and state.is_main_process:
            log.warning("train.mixed_precision=%s is slower than fp32 on this %s (a training pass: %.0f ms against %.0f ms, "
                        "each in its fastest kernels: no fast %s units here, or fp32 Winograd convolutions), so this run "
                        "trains in fp32; train.precision_fallback=false keeps %s",
                        requested, state.device.type.upper() if state.device.type == "cpu" else state.device,
                        precision.timings_ms[requested], precision.timings_ms["fp32"], requested, requested)
        return precision

    def _choose_kernels(self) -> KernelChoice:
        """train.channels_last as set, or ("auto") the layout measured fastest for the step's
        dtype, and how instance norms run (gan_style.engine.kernels).
        The main process measures and every process uses its choice (DDP replicas must agree)."""
        dtype = STEP_DTYPES.get(self.precision.mixed_precision, torch.float32)
        choice = _measured_on_main(self.accelerator, lambda: choose_kernels(self.device, dtype, *self._kernel_settings()))
        log.info("kernels for %s steps on %s: %s", self.precision.mixed_precision if dtype != torch.float32 else "fp32",
                 self.device, choice.describe())
        return choice

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self, dataset: torch.utils.data.Dataset, epoch: int, skip: int) -> Iterator[Any]:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), self.config.seed, epoch, getattr(dataset, "shuffle", True))
        batches = shard_batches(order, self.config.batch_size, self.accelerator.process_index, self.accelerator.num_processes)
        num_workers = getattr(getattr(self.method.config, "data", None), "num_workers", 0)
        loader = DataLoader(dataset, batch_sampler=batches[skip:], num_workers=num_workers)
        return iter(loader)

    def batches_per_epoch(self, dataset: torch.utils.data.Dataset) -> int:
        return len(shard_batches(list(range(len(dataset))), self.config.batch_size, 0, self.accelerator.num_processes))

    def fit(self, on_step: Callable[[int, dict[str, Tensor]], None] | None = None) -> Progress:
        """Train until the epoch schedule ends or a budget (max_steps, max_minutes) is reached.

        ``on_step(step, logs)`` is called after every iteration with its detached loss terms.
        """
        cfg = self.config
        dataset = self.method.build_dataset(cfg.seed, self.accelerator.num_processes)
        per_epoch = self.batches_per_epoch(dataset)
        last_epoch = cfg.last_epoch  # None: the run is counted in iterations (max_steps)
        planned = cfg.max_steps
        if last_epoch is not None:
            remaining = (last_epoch - self.progress.epoch + 1) * per_epoch - self.progress.batch_in_epoch + self.progress.step
            planned = remaining if planned is None else min(planned, remaining)
        self._open_logs()
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=planned, initial=self.progress.step, desc=f"{self.method.name}", unit="it", dynamic_ncols=True)
        try:
            started = time.monotonic()
            window: dict[str, list[Tensor]] = defaultdict(list)
            stop = False
            while (last_epoch is None or self.progress.epoch <= last_epoch) and not stop:
                for batch in self._batches(dataset, self.progress.epoch, self.progress.batch_in_epoch):
                    logs = self.train_step(batch)
                    self.progress.batch_in_epoch += 1
                    for key, value in logs.items():
                        window[key].append(value)
                    if on_step is not None:
                        on_step(self.progress.step, logs)
                    if bar is not None:
                        bar.update(1)
                    step = self.progress.step
                    if step % cfg.log_every == 0:
                        means = self._log_scalars(window)
                        window.clear()
                        if bar is not None:
                            bar.set_postfix({k[len("loss/"):]: f"{v:.3f}" for k, v in means.items() if k.startswith("loss/")}, refresh=False)
                    if step % cfg.image_every == 0:
                        self._log_images()
                    if step % cfg.save_every == 0:
                        self.save()
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        self.evaluate_and_keep_best()
                    out_of_steps = cfg.max_steps is not None and step >= cfg.max_steps
                    out_of_time = cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.max_minutes
                    if out_of_steps or out_of_time:
                        stop = True
                        break
                else:
                    self._end_epoch()
            if window:
                self._log_scalars(window)
            self._log_images()
            if self._saved_step != self.progress.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()  # ends the bar's line, so an error message starts a line of its own
            release_freed_pages()  # the run is over: an idle process need not hold its step's peak
        if self._writer is not None:
            self._writer.flush()
        return self.progress

    def _end_epoch(self) -> None:
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0

    # -- logging -------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        if self.run_dir is None or not self.accelerator.is_main_process or self._writer is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(self.method.config, self.run_dir / "config.yaml")
        self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log_scalars(self, window: Mapping[str, list[Tensor]]) -> dict[str, float]:
        # One host sync per logging interval, not per step.
        means = {k: float(torch.stack(v).float().mean()) for k, v in window.items() if v}
        if self._writer is not None:
            for key, value in means.items():
                self._writer.add_scalar(key, value, self.progress.step)
            for name, optimizer in self.optimizers.items():
                self._writer.add_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"], self.progress.step)
        return means

    def _log_images(self) -> None:
        if not hasattr(self, "_last_batch") or self.run_dir is None or not self.accelerator.is_main_process:
            return
        import torchvision

        with torch.no_grad():
            visuals = self.method.visuals(self._last_batch, self._last_carry, self._raw)
        if not visuals:
            return
        # First image of the batch for every visual, in the method's order; grey images
        # are shown as RGB. Row length 4 puts CycleGAN's A and B rows under each other.
        tiles = []
        for image in visuals.values():
            tile = image[:1].detach().float().cpu()
            tiles.append(tile.expand(-1, 3, -1, -1) if tile.shape[1] == 1 else tile[:, :3])
        size = tiles[0].shape[-2:]
        tiles = [t if t.shape[-2:] == size else torch.nn.functional.interpolate(t, size=size) for t in tiles]
        grid = torchvision.utils.make_grid(torch.cat(tiles), nrow=4, normalize=True, value_range=(-1, 1))
        self._writer.add_image("samples", grid, self.progress.step)
        samples = self.run_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, samples / f"step_{self.progress.step:08d}.png")

    # -- evaluation during training (train.eval_every) -------------------------------------------
    def _evaluation_set(self) -> tuple[Tensor, Tensor]:
        """(sources, real) of the first ``train.eval_images`` items of the method's dataset built on
        its test split (``data.phase = "test"``, flips off) when it has one, else of the training
        set; taken through the contract (``build_dataset``, items' ``"A"``/``"B"`` images)."""
        from gan_style.config import ConfigError

        if self._eval_set is not None:
            return self._eval_set
        cfg, dataset = self.config, None
        data = getattr(self.method.config, "data", None)
        if data is not None and hasattr(data, "phase"):
            config = copy.deepcopy(self.method.config)
            config.data.phase = "test"
            if hasattr(config.data, "no_flip"):
                config.data.no_flip = True
            try:
                dataset = type(self.method)(config).build_dataset(cfg.seed, 1)
            except (ValueError, OSError) as error:  # no test folders: DatasetError is a ValueError
                log.info("train.eval_every: no test split (%s)", " ".join(str(error).split())[:200])
        if dataset is None:
            dataset = self.method.build_dataset(cfg.seed, 1)
            log.warning("train.eval_every: the dataset has no test split; evaluating on %d training images (not held out)", cfg.eval_images)
        items = [dataset[i] for i in range(min(cfg.eval_images, len(dataset)))]
        if not all(isinstance(item, Mapping) and isinstance(item.get("A"), Tensor) and isinstance(item.get("B"), Tensor) for item in items):
            raise ConfigError(f"train.eval_every: {self.method.name}'s data items have no 'A' (source) and 'B' (target) images "
                              "to evaluate a translation on; set train.eval_every=0")
        self._eval_set = (torch.stack([item["A"] for item in items]), torch.stack([item["B"] for item in items]))
        return self._eval_set

    def inference_networks(self) -> dict[str, nn.Module]:
        """The networks as inference uses them: with ``train.ema_decay``, copies of the averaged
        ones (``Method.ema_networks``) in their averaged weights, as a saved checkpoint loads."""
        nets = dict(self._raw)
        if self.ema is not None:
            for name, average in self.ema.averages.items():
                averaged = copy.deepcopy(self._raw[name])
                averaged.load_state_dict(average)  # copied into the network's own dtypes
                nets[name] = averaged
        return nets

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The metrics of ``train.eval_metrics`` (gan_style.evaluation) of the AtoB translations of
        the evaluation set by the networks inference would use (the averaged weights with
        ``train.ema_decay``), with FID added when the Inception weights are found."""
        from gan_style.config import ConfigError
        from gan_style.evaluation import evaluate_images
        from gan_style.translate import run_padded

        cfg = self.config
        sources, real = self._evaluation_set()
        nets = self.inference_networks()
        translator = self.method.translator(nets, "AtoB")
        if any(spec.required for spec in translator.inputs):
            raise ConfigError(f"train.eval_every: {translator.description or self.method.name} needs inputs besides the image; set train.eval_every=0")
        function = translator.bind()
        modes = {name: net.training for name, net in nets.items()}
        for net in nets.values():
            net.eval()
        try:
            fakes = torch.cat([run_padded(function, sources[i : i + 4].to(self.device).float(), translator.size_multiple).clamp(-1, 1).float().cpu()
                               for i in range(0, len(sources), 4)])
        finally:
            for name, net in nets.items():
                net.train(modes[name])
        metrics = list(cfg.eval_metrics)
        if "fid" not in metrics and (cfg.eval_inception_weights is not None or cfg.eval_track == "fid" or self._inception_found()):
            metrics.append("fid")
        return evaluate_images(fakes, real, sources, metrics, inception_weights=cfg.eval_inception_weights,
                               device=self.device, image_size=int(sources.shape[-1]), seed=cfg.seed)

    @staticmethod
    def _inception_found() -> bool:
        from gan_style.errors import UserError
        from gan_style.evaluation.inception import find_inception_weights

        try:
            find_inception_weights(None)
            return True
        except UserError:
            return False

    def evaluate_and_keep_best(self) -> dict[str, float]:
        """``evaluate``, log ``eval/<metric>`` and, when the tracked metric improves, save this
        step and link it as ``checkpoints/best.pt``. Every process evaluates (the same images and
        weights), so that they agree on saving."""
        from gan_style.evaluation import HIGHER_IS_BETTER

        results = self.evaluate()
        step = self.progress.step
        if self._writer is not None:
            for key, value in results.items():
                self._writer.add_scalar(f"eval/{key}", value, step)
        key = self.config.eval_track
        value = results[key]
        sign = -1.0 if key in HIGHER_IS_BETTER else 1.0
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        if self.run_dir is not None and (self._best is None or sign * value < sign * self._best["value"]):
            self._best = {"value": float(value), "step": float(step)}
            if self._saved_step != step:
                self.save()
            if self.accelerator.is_main_process:
                ckpt_dir = self.run_dir / "checkpoints"
                atomic_link(ckpt_dir / snapshot_name(step), ckpt_dir / BEST)
        return results

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method.name,
            "config": to_dict(self.method.config),
            "networks": {name: net.state_dict() for name, net in self._raw.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "progress": asdict(self.progress),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"eval_best": self._best} if self._best is not None else {}),
            "local": self._local_state(),
        }

    def _local_state(self) -> dict[str, Any]:
        """State that differs between processes: RNGs and the method's own (image pools)."""
        return {"rng": rng_state(), "streams": self.streams.state_dict(), "method": self.method.state_dict()}

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the full training state once: ``checkpoints/step_N.pt``, which ``latest.pt`` then
        names too (or ``path``). Every process > 0 writes its own local state beside it."""
        if self.run_dir is None and path is None:
            return None
        ckpt_dir = self.run_dir / "checkpoints" if path is None else Path(path).parent
        target = Path(path) if path is not None else ckpt_dir / snapshot_name(self.progress.step)
        rank = self.accelerator.process_index
        if self.accelerator.is_main_process and ckpt_dir.is_dir():
            remove_orphans(ckpt_dir)  # before the barrier: no process is writing yet
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            atomic_torch_save(self.state_dict(), target)
        if rank > 0:
            atomic_torch_save(self._local_state(), rank_file(target, rank))
        self.accelerator.wait_for_everyone()
        if path is None:
            # Each process links its own file, once every file of this step exists.
            latest = ckpt_dir / LATEST
            atomic_link(target if rank == 0 else rank_file(target, rank), latest if rank == 0 else rank_file(latest, rank))
            if self.accelerator.is_main_process:
                self._prune_snapshots(ckpt_dir)
            self.accelerator.wait_for_everyone()
            target = ckpt_dir / LATEST
        self._saved_step = self.progress.step
        return target

    def _prune_snapshots(self, ckpt_dir: Path) -> None:
        kept = snapshots(ckpt_dir)
        for old in kept[: max(0, len(kept) - self.config.keep_checkpoints)]:
            for file in (old, *old.parent.glob(f"{old.stem}.rank*.pt")):
                file.unlink(missing_ok=True)

    def load(self, path: str | Path, state: Mapping[str, Any] | None = None) -> None:
        """Restore a checkpoint written by ``save`` (the config must build the same networks): a
        checkpoint file, or a run folder (its newest intact checkpoint). ``state`` is the file's
        content when the caller has already read it."""
        if state is None:
            path, state = load_run_checkpoint(path)
        path = Path(path)
        if self.accelerator.is_main_process:
            remove_orphans(path.parent)
        for name, net in self._raw.items():
            if name not in state["networks"]:
                raise CheckpointError(f"{path} has no weights for network {name!r}; it was saved by another configuration")
            net.load_state_dict(state["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.progress = Progress(**state["progress"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # a run that starts averaging now
                self.ema = WeightAverage({n: self._raw[n] for n in self.method.ema_networks}, self.config.ema_decay, self.config.ema_start_step)
        self._best = state.get("eval_best", self._best)
        self._saved_step = self.progress.step
        local = state["local"]
        rank = self.accelerator.process_index
        own = rank_file(path, rank)
        if rank > 0 and own.is_file():
            local = read_weights(own)
        self.method.load_state_dict(local["method"])
        self.streams.load_state_dict(local.get("streams", {}))
        set_rng_state(local["rng"])

    def summary(self) -> str:
        lines = [f"run folder: {self.run_dir}"]
        if self.run_dir is not None:
            lines += [
                f"  checkpoints: {self.run_dir / 'checkpoints' / 'latest.pt'}",
                f"  samples:     {self.run_dir / 'samples'}",
                f"  tensorboard: tensorboard --logdir {self.run_dir / 'tensorboard'}",
            ]
        return "\n".join(lines)

