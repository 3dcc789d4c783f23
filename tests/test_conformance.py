"""The method contract, tested once for every registered method (a new method gets these tests by
being registered in ``gan_style.methods.METHODS`` with a ``smoke`` preset): every preset builds, a
synthetic step runs in fp32 and bf16, a stopped and resumed run gives the same next losses as one
never stopped, two-process DDP keeps the replicas identical, and a run folder loads through
``gan_style.load`` and translates. Then the engine's services: conditional phases, EMA, streams."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import gan_style
from gan_style.config import apply_overrides
from gan_style.engine.checkpoint import load_checkpoint
from gan_style.engine.contract import Method, MethodConfig, OptimizerSpec, Phase, StepOutput, config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods import METHODS, get_method
from gan_style.nn import layers

HERE = Path(__file__).resolve().parent
NAMES = sorted(METHODS)
# Fields that name pretrained weight files: random weights instead (none are on this machine).
RANDOM_WEIGHTS = {"vgg_weights": "random"}


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorboard's deprecations, "random encoder" notices
        yield


def smoke(name: str, **train: Any) -> MethodConfig:
    return config_from_overrides(get_method(name), "smoke", {"train": train})


def record(history: dict[int, dict]):
    return lambda step, logs: history.__setitem__(step, {k: v.clone() for k, v in logs.items()})


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_builds(name):
    method_cls = get_method(name)
    assert "smoke" in method_cls.presets and method_cls.default_preset in method_cls.presets
    for preset in [None, *method_cls.presets]:
        config = config_from_overrides(method_cls, preset, {})
        config = apply_overrides(config, {k: v for k, v in RANDOM_WEIGHTS.items() if hasattr(config, k)})
        method = method_cls(config)
        networks = method.build_networks()
        owned = {n for spec in method.optimizers() for n in spec.networks}
        assert owned <= set(networks), preset
        assert {phase.optimizer for phase in method.phases()} <= {spec.name for spec in method.optimizers()}
        assert set(method.ema_networks) <= set(networks)
        assert sum(p.numel() for n in owned for p in networks[n].parameters()) > 0


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_a_synthetic_step_runs(name, precision, demo_cache, monkeypatch):
    # bf16 as asked even on a CPU without bf16 units, where the run would fall back to fp32
    config = smoke(name, mixed_precision=precision, precision_fallback=False)
    trainer = Trainer(get_method(name)(config), show_progress=False)
    # Every weight cast the step hands out is its weight as it is now: a phase after an optimiser
    # step (CUT's and MUNIT's G phase after D's) must not see the stepped network's old casts.
    # PyTorch's fused Adam moves no version counter, which the casts go by (session p).
    stale: list[tuple[int, ...]] = []
    hand_out = layers.WeightCasts.__call__

    def checked(casts: layers.WeightCasts, weight: torch.Tensor) -> torch.Tensor:
        cast = hand_out(casts, weight)
        if cast.dtype != weight.dtype and not torch.equal(cast.detach(), weight.detach().to(cast.dtype)):
            stale.append(tuple(weight.shape))
        return cast

    monkeypatch.setattr(layers.WeightCasts, "__call__", checked)
    versions = {id(p): p._version for n in trainer._owned for p in trainer.unwrapped(n).parameters()}
    assert trainer.accelerator.mixed_precision == trainer.precision.mixed_precision == precision
    before = {n: [p.detach().clone() for p in trainer.unwrapped(n).parameters()] for n in sorted(trainer._owned)}
    size = getattr(getattr(config, "data", None), "crop_size", 32)  # the smoke preset's training size
    generator = torch.Generator().manual_seed(0)
    # One cycle of the phases that alternate by iteration (1 iteration for most methods).
    period = math.lcm(*(phase.every for phase in trainer.phases if phase.of == "iteration"))
    logs = {}
    for _ in range(period):
        logs.update(trainer.train_step(trainer.method.synthetic_batch(size, config.train.batch_size, generator)))
    phases = {phase.name for phase in trainer.phases}
    losses = {k: v for k, v in logs.items() if k.startswith("loss/")}
    assert losses and all(k.split("/")[1] in phases for k in losses)
    assert all(torch.isfinite(v).all() for v in logs.values())
    changed = [n for n, params in before.items() if any(not torch.equal(a, b) for a, b in zip(params, trainer.unwrapped(n).parameters()))]
    assert changed == sorted(trainer._owned), "every trained network takes a step"
    assert not stale, f"casts of weights an optimiser had stepped since: {stale}"
    assert all(p._version > versions[id(p)] for n in trainer._owned for p in trainer.unwrapped(n).parameters()), \
        "an optimiser step moves its parameters' version counters"
    for name_, net in trainer.networks.items():
        expected = name_ in trainer._owned
        assert all(p.requires_grad == expected for p in net.parameters()), f"{name_}: frozen only when no optimiser owns it"


@pytest.mark.parametrize("name", NAMES)
def test_resume_gives_the_same_next_losses(name, tmp_path, demo_cache):
    straight: dict[int, dict] = {}
    method_cls = get_method(name)
    Trainer(method_cls(smoke(name, max_steps=6)), tmp_path / "straight", show_progress=False).fit(record(straight))
    Trainer(method_cls(smoke(name, max_steps=3)), tmp_path / "split", show_progress=False).fit()
    saved = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    config = apply_overrides(method_cls.Config(), saved["config"])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=6))
    resumed = Trainer(method_cls(config), tmp_path / "split", show_progress=False)
    resumed.load(tmp_path / "split")
    continued: dict[int, dict] = {}
    resumed.fit(record(continued))
    assert sorted(continued) == [4, 5, 6]
    for step, logs in continued.items():
        assert logs.keys() == straight[step].keys()
        for key, value in logs.items():
            assert torch.equal(value, straight[step][key]), f"step {step} {key}: {value} != {straight[step][key]}"


def run_two_processes(name: str, out: Path, demo_cache: Path, port: int, precision: str = "no") -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", GAN_STYLE_CACHE=str(demo_cache), PYTHONPATH=str(HERE.parent))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), str(HERE / "ddp_worker.py"), name, str(out), precision,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_process_ddp_keeps_replicas_identical(name, tmp_path, demo_cache):
    reports = run_two_processes(name, tmp_path, demo_cache, 29500 + NAMES.index(name) + 17)
    for report in reports:
        assert report["world_size"] == 2 and report["distributed_type"] == "DistributedType.MULTI_CPU"
        assert len(report["seen"]) == 3
    assert reports[0]["seen"] != reports[1]["seen"], "each process trains on its own shard"
    assert reports[0]["checksums"] == reports[1]["checksums"], "DDP averaged the gradients"
    assert (tmp_path / "run" / "checkpoints" / "latest.rank1.pt").is_file()


@pytest.mark.slow
def test_two_processes_train_in_the_precision_the_main_one_measured(tmp_path, demo_cache):
    # bf16 where it was measured faster, else fp32 (train.precision_fallback): every replica the same
    reports = run_two_processes("cyclegan", tmp_path, demo_cache, 29500 + len(NAMES) + 17, precision="bf16")
    assert reports[0]["mixed_precision"] == reports[1]["mixed_precision"] in ("bf16", "no")
    assert reports[0]["checksums"] == reports[1]["checksums"]


@pytest.mark.parametrize("name", NAMES)
def test_a_run_loads_and_translates(name, tmp_path, demo_cache):
    run = tmp_path / "run"
    Trainer(get_method(name)(smoke(name, max_steps=1)), run, show_progress=False).fit()
    model = gan_style.load(run, device="cpu")
    assert model.method == name and model.step == 1
    photo = Image.new("RGB", (37, 29), (200, 120, 40))
    for direction in model.directions:
        extra = {spec.name: Image.new("RGB", (24, 24), (10, 60, 200)) for spec in model.translator(direction).inputs if spec.kind == "image"}
        out = model.translate(photo, direction=direction, **extra)
        assert isinstance(out, Image.Image) and out.size == photo.size
        batch = torch.rand(2, 3, 20, 28) * 2 - 1
        result = model.translate(batch, direction=direction, **extra)
        assert result.shape == batch.shape and result.abs().max() <= 1
        assert [im.size for im in model.translate([photo, photo.resize((16, 40))], direction=direction, **extra)] == [(37, 29), (16, 40)]


# -- the engine's services -----------------------------------------------------------------------
class LazyRegularised(Method):
    """A toy two-player method: D and G on alternate iterations, and a regulariser that steps D's
    optimiser after every 16th D step (StyleGAN2's lazy R1)."""

    name = "toy"
    Config = MethodConfig

    def build_networks(self) -> dict[str, nn.Module]:
        return {"G": nn.Linear(2, 2), "D": nn.Linear(2, 1)}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("G", ("G",), 1e-2), OptimizerSpec("D", ("D",), 1e-2)]

    def phases(self) -> list[Phase]:
        def d_step(ctx, batch):
            return StepOutput({"real": ctx.nets["D"](batch["x"]).mean()}, carry={"D_at": ctx.iteration})

        def regulariser(ctx, batch):
            return StepOutput({"r1": ctx.nets["D"].weight.square().sum()}, carry={"reg_at": ctx.iteration})

        def g_step(ctx, batch):
            noise = torch.randn(batch["x"].shape, generator=ctx.rng("z"))
            return StepOutput({"fool": -ctx.nets["D"](ctx.nets["G"](noise)).mean()})

        return [
            Phase("D", "D", d_step, every=2, offset=0),
            Phase("D_reg", "D", regulariser, every=16, of="D"),
            Phase("G", "G", g_step, every=2, offset=1),
        ]

    def build_dataset(self, seed: int, world_size: int = 1):
        return [{"x": torch.full((2,), float(i))} for i in range(10)]


def toy_trainer(run: Path | None, max_steps: int) -> Trainer:
    config = MethodConfig(train=dataclasses.replace(MethodConfig().train, max_steps=max_steps, n_epochs=100, log_every=1, save_every=1000, channels_last=False))
    return Trainer(LazyRegularised(config), run, show_progress=False)


def test_a_lazy_regulariser_runs_every_16_d_steps_and_resumes_in_phase(tmp_path):
    trainer = toy_trainer(tmp_path / "run", max_steps=70)
    history: dict[int, dict] = {}
    trainer.fit(record(history))
    ran = {step: sorted({k.split("/")[1] for k in logs}) for step, logs in history.items()}
    # Iteration i (1-based step i + 1): D on even i, G on odd i, the regulariser after D steps 1, 17, 33 ...
    for step, phases in ran.items():
        i = step - 1
        expected = ["D"] if i % 2 == 0 else ["G"]
        if i % 2 == 0 and (i // 2) % 16 == 0:
            expected = ["D", "D_reg"]
        assert phases == expected, f"step {step}: {phases}"
    assert [s for s, p in ran.items() if "D_reg" in p] == [1, 33, 65]
    assert trainer.progress.phase_runs == {"D": 35, "D_reg": 3, "G": 35}
    # Stop at 40 and resume: the same phases and losses at 41..70.
    first = toy_trainer(tmp_path / "split", max_steps=40)
    first.fit()
    resumed = toy_trainer(tmp_path / "split", max_steps=70)
    resumed.load(tmp_path / "split")
    continued: dict[int, dict] = {}
    resumed.fit(record(continued))
    assert sorted(continued) == list(range(41, 71))
    for step, logs in continued.items():
        assert logs.keys() == history[step].keys(), step
        for key, value in logs.items():
            assert torch.equal(value, history[step][key]), f"step {step} {key}"


@pytest.mark.parametrize(("bf16_ms", "fallback", "trains_in"), [(30.0, True, "no"), (12.0, True, "no"), (12.0, False, "bf16"), (5.0, True, "bf16")])
def test_bf16_measured_slower_than_fp32_trains_in_fp32_with_a_warning(bf16_ms, fallback, trains_in, monkeypatch, caplog):
    # the kernel probe's timings as a CPU without bf16 units gives them (bf16 emulated: slower);
    # 3x slower is settled by the first round (_median_ms), 1.2x by the full choice (_choose)
    from gan_style.engine import kernels

    def first_round(probes, device, rounds=7, best=False):
        return {name: bf16_ms if name == "bf16" else 10.0 for name in probes}

    monkeypatch.setattr(kernels, "cpu_has_bf16_units", lambda device: False)

    def full_choice(device_type, device_index, dtype, threads, layout, family, winograd):
        return kernels.KernelChoice(False, "native", {"nchw/native": bf16_ms if dtype == torch.bfloat16 else 10.0}, "direct")

    monkeypatch.setattr(kernels, "_median_ms", first_round)
    monkeypatch.setattr(kernels, "_choose", full_choice)
    train = dataclasses.replace(MethodConfig().train, mixed_precision="bf16", precision_fallback=fallback, channels_last=False)
    with caplog.at_level("WARNING", logger="gan_style"):
        trainer = Trainer(LazyRegularised(MethodConfig(train=train)), show_progress=False)
    assert trainer.accelerator.mixed_precision == trainer.precision.mixed_precision == trains_in
    warned = [r.getMessage() for r in caplog.records if "slower than fp32" in r.getMessage()]
    assert len(warned) == (trains_in == "no")
    if warned:
        assert f"{bf16_ms:.0f} ms against 10 ms" in warned[0] and "train.precision_fallback=false" in warned[0]
        assert trainer.precision.timings_ms == {"bf16": bf16_ms, "fp32": 10.0}
    logs = trainer.train_step({"x": torch.ones(1, 2)})
    assert all(torch.isfinite(v).all() for v in logs.values())


@pytest.mark.parametrize("units", [True, False])
def test_a_cpu_with_bf16_units_is_not_screened_by_a_busy_first_round(units, monkeypatch):
    """The first round settles emulated bf16 (3x slower) only where the CPU has no bf16 units;
    with them (AMX, AVX512-BF16) a slow first round is a busy machine, and the full round-robin
    timings decide (session n's AMX Xeon fell back to fp32 while a test suite ran beside it)."""
    from gan_style.engine import kernels

    assert kernels.cpu_has_bf16_units(torch.device("meta")) is False
    screened = []

    def busy_first_round(probes, device, rounds=7, best=False):
        screened.append(rounds)
        return {name: 30.0 if name == "bf16" else 10.0 for name in probes}

    def full_choice(device_type, device_index, dtype, threads, layout, family, winograd):
        return kernels.KernelChoice(True, "fused", {"channels_last/fused": 8.0 if dtype == torch.bfloat16 else 10.0}, "direct")

    monkeypatch.setattr(kernels, "cpu_has_bf16_units", lambda device: units)
    monkeypatch.setattr(kernels, "_median_ms", busy_first_round)
    monkeypatch.setattr(kernels, "_choose", full_choice)
    choice = kernels.choose_precision("cpu", "bf16")
    assert (choice.mixed_precision, screened) == (("bf16", []) if units else ("no", [3]))


@pytest.mark.parametrize(("winograd_fp32_ms", "trains_in"), [(6.0, "no"), (9.0, "bf16")])
def test_bf16_is_weighed_against_fp32_with_its_winograd_convolutions(winograd_fp32_ms, trains_in, monkeypatch):
    """bf16 (8 ms) beats fp32's direct convolutions (10 ms) in the layout probe, but where fp32
    steps run Winograd the two are timed again, each in its own kernels."""
    from gan_style.engine import kernels

    def timed(probes, device, rounds=7, best=False):
        if set(probes) == {"bf16", "fp32"} and rounds == 7:  # the second timing, fp32 by Winograd
            return {"bf16": 8.0, "fp32": winograd_fp32_ms}
        return {name: 8.0 if name == "bf16" else 10.0 for name in probes}

    def full_choice(device_type, device_index, dtype, threads, layout, family, winograd):
        fp32 = dtype == torch.float32
        return kernels.KernelChoice(True, "batchnorm", {"channels_last/batchnorm": 10.0 if fp32 else 8.0}, "winograd" if fp32 else "direct")

    monkeypatch.setattr(kernels, "_median_ms", timed)
    monkeypatch.setattr(kernels, "_choose", full_choice)
    choice = kernels.choose_precision("cpu", "bf16")
    assert choice.mixed_precision == trains_in and choice.timings_ms == {"bf16": 8.0, "fp32": winograd_fp32_ms}


def test_a_phase_with_no_losses_steps_nothing():
    class Idle(LazyRegularised):
        def phases(self):
            return [Phase("D", "D", lambda ctx, batch: StepOutput({}))]

    config = MethodConfig(train=dataclasses.replace(MethodConfig().train, channels_last=False))
    trainer = Trainer(Idle(config), show_progress=False)
    before = trainer.unwrapped("D").weight.detach().clone()
    assert trainer.train_step({"x": torch.ones(1, 2)}) == {}
    assert torch.equal(before, trainer.unwrapped("D").weight)


def test_ema_of_the_generators_is_saved_resumed_and_used_for_inference(tmp_path, demo_cache):
    run = tmp_path / "run"
    trainer = Trainer(get_method("cut")(smoke("cut", max_steps=3, ema_decay=0.5, ema_start_step=1)), run, show_progress=False)
    trainer.fit()
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    averaged = state["ema"]["G"]
    assert all(v.dtype == torch.float32 for v in averaged.values())
    current = trainer.unwrapped("G").state_dict()
    assert any(not torch.equal(averaged[k], current[k].float()) for k in current), "an average, not the last weights"
    model = gan_style.load(run, device="cpu")
    assert model.averaged
    for key, value in model.networks["G"].state_dict().items():
        assert torch.equal(value, averaged[key])
    plain = gan_style.load(run, device="cpu", use_ema=False)
    assert not plain.averaged and torch.equal(plain.networks["G"].state_dict()["model.1.weight"], current["model.1.weight"].cpu())
    resumed = Trainer(get_method("cut")(apply_overrides(get_method("cut").Config(), state["config"])), run, show_progress=False)
    resumed.load(run)
    for key, value in resumed.ema.state_dict()["G"].items():
        assert torch.equal(value, averaged[key])


def test_random_streams_differ_per_process_and_name():
    from gan_style.engine.random import RandomStreams

    a, b = RandomStreams(0, rank=0), RandomStreams(0, rank=1)
    draws = {torch.rand(3, generator=a["x"]).sum().item(), torch.rand(3, generator=b["x"]).sum().item(), torch.rand(3, generator=a["y"]).sum().item()}
    assert len(draws) == 3
    saved = a.state_dict()
    expected = torch.rand(3, generator=a["x"])
    restored = RandomStreams(0, rank=0)
    restored.load_state_dict(saved)
    assert torch.equal(torch.rand(3, generator=restored["x"]), expected)


def test_load_an_official_cyclegan_generator():
    from conftest import GOLDEN, require_shared

    path = require_shared(GOLDEN / "cyclegan" / "resnet_9blocks_ngf16" / "latest_net_G.pth")
    model = gan_style.load(path, device="cpu")
    assert model.method == "reference" and "resnet_9blocks" in model.description
    photo = Image.new("RGB", (70, 45), (90, 140, 200))
    out = model.translate(photo)
    assert isinstance(out, Image.Image) and out.size == photo.size
    with pytest.raises(ValueError, match="one generator, which translates AtoB"):
        model.translate(photo, direction="BtoA")


def test_help_explains_load():
    assert "run folder" in gan_style.load.__doc__ and "translate" in gan_style.load.__doc__
    assert "load" in dir(gan_style)
