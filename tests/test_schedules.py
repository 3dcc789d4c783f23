"""Learning-rate schedules (gan_style.engine.schedules) and the trainer options' validation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler

from gan_style.config import ConfigError, apply_overrides
from gan_style.engine.config import LR_POLICIES, TrainConfig
from gan_style.engine.schedules import build_schedule, plateau, set_lr

BASE = 2e-4  # CycleGAN's lr


def approx(values):
    return pytest.approx(values, rel=1e-12, abs=1e-18)


def optimizer(lr=BASE):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def torch_rates(make, count, *, metric=False):
    """The lr of each epoch (or iteration) with a torch scheduler stepped at its end, as the
    trainer did: ``step(0)`` for ReduceLROnPlateau, ``step()`` otherwise."""
    opt = optimizer()
    scheduler = make(opt)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(count):
            rates.append(opt.param_groups[0]["lr"])
            scheduler.step(0) if metric else scheduler.step()
    return rates


def epoch_rates(config, count):
    """The lr of epochs epoch_count, epoch_count + 1, ... (the step argument must not matter)."""
    schedule = build_schedule(config)
    return [BASE * schedule(97 * e, config.epoch_count + e) for e in range(count)]


def factors(config, steps, epoch=1):
    schedule = build_schedule(config)
    return [schedule(s, epoch) for s in steps]


# -- epoch unit: the reference's torch schedulers, stepped at each epoch end -----------------------


@pytest.mark.parametrize("epoch_count", [1, 3])
def test_epoch_linear_equals_lambda_lr(epoch_count):
    config = TrainConfig(n_epochs=5, n_epochs_decay=7, epoch_count=epoch_count)
    count = config.last_epoch - epoch_count + 2  # the run's epochs and the factor after its end

    def rule(e):  # the reference's lambda_rule, e = epoch ends
        return 1.0 - max(0, e + epoch_count - config.n_epochs) / float(config.n_epochs_decay + 1)

    expected = torch_rates(lambda opt: lr_scheduler.LambdaLR(opt, rule), count)
    assert epoch_rates(config, count) == approx(expected)
    assert epoch_rates(config, count)[-1] == 0.0  # zero after the last epoch, never negative
    assert epoch_rates(TrainConfig(n_epochs=2, n_epochs_decay=2), 4) == approx([BASE, BASE, BASE * 2 / 3, BASE / 3])


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_epoch_step_equals_step_lr(gamma):
    config = TrainConfig(n_epochs=6, n_epochs_decay=6, lr_policy="step", lr_decay_iters=3, lr_gamma=gamma)
    expected = torch_rates(lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=gamma), 12)
    assert epoch_rates(config, 12) == approx(expected)
    assert epoch_rates(config, 12)[3] == approx(BASE * gamma)


def test_epoch_cosine_equals_cosine_annealing():
    # T_max = n_epochs as the reference: the lr rises again during the n_epochs_decay epochs.
    config = TrainConfig(n_epochs=5, n_epochs_decay=7, lr_policy="cosine")
    expected = torch_rates(lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0), 13)
    assert epoch_rates(config, 13) == approx(expected)
    assert epoch_rates(config, 13)[5] == 0.0


def test_epoch_plateau_equals_reduce_on_plateau():
    config = TrainConfig(n_epochs=20, n_epochs_decay=20, lr_policy="plateau")
    # The reference's scheduler, fed 0 at every epoch end; lr 2e-4 stays above its eps = 1e-8.
    expected = torch_rates(lambda opt: lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.2, threshold=0.01, patience=5), 40, metric=True)
    assert epoch_rates(config, 40) == approx(expected)
    assert [plateau(e) for e in (0, 1, 6, 7, 12, 13, 39)] == approx([1, 1, 1, 0.2, 0.2, 0.04, 0.2**6])


def test_epoch_multistep_inverse_constant():
    config = TrainConfig(n_epochs=6, n_epochs_decay=6, lr_policy="multistep", lr_milestones=(2, 5), lr_gamma=0.5)
    expected = torch_rates(lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5), 12)
    assert epoch_rates(config, 12) == approx(expected)
    inverse = TrainConfig(lr_policy="inverse", lr_inverse_k=0.5, epoch_count=4)
    assert epoch_rates(inverse, 4) == approx([BASE / (1 + 0.5 * e) for e in range(4)])  # e = epoch ends
    assert epoch_rates(TrainConfig(lr_policy="constant"), 200) == [BASE] * 200


# -- iteration unit ----------------------------------------------------------------------------


def test_iteration_step_munit():
    # MUNIT: lr x0.5 every 100,000 iterations, counted in iterations whatever the epoch.
    config = TrainConfig(lr_unit="iteration", lr_policy="step", lr_step_size=100_000, lr_gamma=0.5, max_steps=1_000_000)
    assert factors(config, [0, 99_999, 100_000, 199_999, 250_000]) == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert build_schedule(config)(100_000, 1) == build_schedule(config)(100_000, 57)
    # MUNIT's loop: StepLR stepped before each iteration, so iteration i uses gamma ** (i // size).
    small = TrainConfig(lr_unit="iteration", lr_policy="step", lr_step_size=7, lr_gamma=0.5, max_steps=40)
    expected = torch_rates(lambda opt: lr_scheduler.StepLR(opt, step_size=7, gamma=0.5), 40)
    assert [BASE * f for f in factors(small, range(40))] == approx(expected)


def test_iteration_inverse_adain():
    config = TrainConfig(lr_unit="iteration", lr_policy="inverse", lr_inverse_k=5e-5, max_steps=160_000)
    steps = [0, 1, 1000, 20_000, 159_999]
    assert factors(config, steps, epoch=3) == approx([1 / (1 + 5e-5 * s) for s in steps])
    assert factors(config, [20_000])[0] == pytest.approx(0.5)


def test_iteration_multistep_and_constant():
    config = TrainConfig(lr_unit="iteration", lr_policy="multistep", lr_milestones=(10, 20), max_steps=30)
    assert factors(config, [0, 9, 10, 19, 20, 29]) == approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert factors(TrainConfig(lr_unit="iteration", lr_policy="constant", max_steps=10), [0, 5, 10**6]) == [1.0] * 3


def test_iteration_linear_is_the_epoch_rule_in_iterations():
    config = TrainConfig(lr_unit="iteration", lr_policy="linear", lr_decay_start=4, max_steps=10)
    got = factors(config, range(11))
    # Iteration s of the run is "epoch" s + 1 of the rule with n_epochs=4, n_epochs_decay=6.
    assert got == approx([r / BASE for r in epoch_rates(TrainConfig(n_epochs=4, n_epochs_decay=6), 11)])
    assert got == approx([1, 1, 1, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0])
    assert factors(TrainConfig(lr_unit="iteration", max_steps=3), range(4)) == approx([3 / 4, 2 / 4, 1 / 4, 0])


def test_iteration_cosine_over_max_steps():
    config = TrainConfig(lr_unit="iteration", lr_policy="cosine", max_steps=100)
    got = factors(config, [0, 25, 50, 99, 100, 150])
    assert got == approx([1, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(math.pi * 0.99)) / 2, 0, 0])


@pytest.mark.parametrize("unit", ["epoch", "iteration"])
def test_warmup_multiplies_the_policy(unit):
    constant = TrainConfig(lr_unit=unit, lr_policy="constant", lr_warmup_steps=4, max_steps=100)
    assert factors(constant, range(7)) == approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1, 1, 1])
    inverse = TrainConfig(lr_unit=unit, lr_policy="inverse", lr_inverse_k=0.1, lr_warmup_steps=4, max_steps=100)
    t = 1 if unit == "iteration" else 2  # step 1 in epoch 3 (two epoch ends)
    assert build_schedule(inverse)(1, 3) == pytest.approx(2 / 5 / (1 + 0.1 * t))


def test_every_policy_builds_in_its_units():
    for policy in LR_POLICIES:
        extra = {"lr_milestones": (2,)} if policy == "multistep" else {}
        assert build_schedule(TrainConfig(lr_policy=policy, **extra))(0, 1) == 1.0
        if policy != "plateau":
            extra |= {"lr_step_size": 5} if policy == "step" else {}
            config = TrainConfig(lr_unit="iteration", lr_policy=policy, max_steps=50, **extra)
            assert build_schedule(config)(0, 1) <= 1.0


def test_set_lr():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 3e-3}])
    base = [g["lr"] for g in opt.param_groups]
    set_lr(opt, base, 0.5)
    set_lr(opt, base, 0.25)  # from the base lrs, not compounded
    assert [g["lr"] for g in opt.param_groups] == approx([2.5e-4, 7.5e-4])
    with pytest.raises(ValueError):
        set_lr(opt, base[:1], 1.0)


# -- TrainConfig: budgets and validation --------------------------------------------------------


def test_last_epoch():
    assert TrainConfig(n_epochs=3, n_epochs_decay=2).last_epoch == 5
    assert TrainConfig(n_epochs=3, n_epochs_decay=2, epoch_count=4).last_epoch == 5  # the reference's loop
    assert TrainConfig(lr_unit="iteration", max_steps=10).last_epoch is None


BAD = [
    ({"batch_size": 0}, "batch_size"),
    ({"lr_policy": "exponential"}, "lr_policy"),
    ({"lr_unit": "second"}, "lr_unit"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"n_epochs": -1}, "n_epochs"),
    ({"n_epochs_decay": -1}, "n_epochs_decay"),
    ({"n_epochs": 0, "n_epochs_decay": 0}, "n_epochs"),
    ({"epoch_count": 0}, "epoch_count"),
    ({"n_epochs": 1, "n_epochs_decay": 1, "epoch_count": 3}, "epoch_count"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": -5}, "max_steps"),
    ({"max_minutes": 0.0}, "max_minutes"),
    ({"max_minutes": math.nan}, "max_minutes"),
    ({"max_minutes": math.inf}, "max_minutes"),
    ({"log_every": 0}, "log_every"),
    ({"image_every": 0}, "image_every"),
    ({"save_every": 0}, "save_every"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"lr_decay_iters": 0}, "lr_decay_iters"),
    ({"lr_step_size": 0}, "lr_step_size"),
    ({"lr_gamma": 0.0}, "lr_gamma"),
    ({"lr_gamma": math.nan}, "lr_gamma"),
    ({"lr_gamma": math.inf}, "lr_gamma"),
    ({"lr_inverse_k": -1e-5}, "lr_inverse_k"),
    ({"lr_inverse_k": math.nan}, "lr_inverse_k"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
    ({"lr_decay_start": -1}, "lr_decay_start"),
    ({"lr_milestones": (5, 5)}, "lr_milestones"),
    ({"lr_milestones": (5, 3)}, "lr_milestones"),
    ({"lr_milestones": (0, 3)}, "lr_milestones"),
    ({"lr_policy": "multistep"}, "lr_milestones"),
    ({"lr_policy": "cosine", "n_epochs": 0}, "n_epochs"),
    ({"lr_unit": "iteration"}, "max_steps"),
    ({"lr_unit": "iteration", "max_steps": 10, "lr_policy": "plateau"}, "lr_policy"),
    ({"lr_unit": "iteration", "max_steps": 10, "lr_policy": "step"}, "lr_step_size"),
    ({"lr_unit": "iteration", "max_steps": 10, "lr_decay_start": 11}, "lr_decay_start"),
]


@pytest.mark.parametrize(("values", "name"), BAD, ids=[f"{k}" for k, _ in BAD])
def test_validation_names_the_field(values, name):
    with pytest.raises(ConfigError, match=rf"^train\.{name}\b") as info:
        TrainConfig(**values)
    assert "\n" not in str(info.value) and "got" in str(info.value)
    with pytest.raises(ConfigError):  # the same through --set / YAML overrides
        apply_overrides(TrainConfig(), values)


def test_overrides_read_schedule_fields():
    config = apply_overrides(TrainConfig(), {"lr_unit": "iteration", "lr_policy": "multistep", "lr_milestones": "10,20", "max_steps": "30"})
    assert (config.lr_milestones, config.max_steps) == ((10, 20), 30)
    assert factors(config, [25]) == approx([0.01])


def test_adain_paper_preset_is_the_reference_decay():
    from gan_style.engine.contract import config_from_overrides
    from gan_style.methods.nst.adain import AdaINTraining

    train = config_from_overrides(AdaINTraining, "paper", {}).train
    assert (train.lr_unit, train.lr_policy, train.max_steps, train.last_epoch) == ("iteration", "inverse", 160_000, None)
    steps = [0, 10, 10_000, 159_999]
    assert factors(train, steps, epoch=9) == approx([1 / (1 + 5e-5 * s) for s in steps])
