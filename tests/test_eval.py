"""``gan-style eval`` and the trainer's train.eval_every (held-out metrics, best.pt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DATA, require_shared, tiny_cyclegan_config
from gan_style.cli import main
from gan_style.config import ConfigError
from gan_style.engine.trainer import BEST, Trainer
from gan_style.evaluation.eval_command import pair_sources
from gan_style.methods.cyclegan import CycleGAN

TRAIN = {"n_epochs": 1, "n_epochs_decay": 1, "log_every": 2, "image_every": 100, "save_every": 1000}


def tiny_config(**train):
    return tiny_cyclegan_config(TRAIN, **train)


def write_images(folder: Path, count: int, smooth: bool, seed: int, prefix: str = "img") -> Path:
    """Flat-ish images (smooth) or fine noise: two "domains" that SWD must tell apart."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        if smooth:
            small = torch.rand(3, 4, 4, generator=generator)
            image = torch.nn.functional.interpolate(small[None], size=(48, 48), mode="bicubic", align_corners=False)[0]
        else:
            image = torch.rand(3, 48, 48, generator=generator)
        array = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{prefix}{index:03d}.png")
    return folder


def eval_json(capsys, *args: str) -> dict[str, float]:
    assert main(["eval", *args, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_of_ready_outputs_orders_the_sets(tmp_path, capsys):
    smooth_a = write_images(tmp_path / "smooth_a", 8, True, 0)
    smooth_b = write_images(tmp_path / "smooth_b", 8, True, 1)
    noisy = write_images(tmp_path / "noisy", 8, False, 2)
    close = eval_json(capsys, "--fake", str(smooth_b), "--input", str(smooth_b), "--real", str(smooth_a), "--metrics", "swd,ssim", "--image-size", "48")
    far = eval_json(capsys, "--fake", str(noisy), "--input", str(smooth_b), "--real", str(smooth_a), "--metrics", "swd,ssim", "--image-size", "48")
    assert set(close) == {"swd", "ssim"}
    assert close["swd"] < 0.5 * far["swd"]
    assert close["ssim"] == pytest.approx(1.0, abs=1e-5) and far["ssim"] < 0.5
    # The table names each metric and its direction.
    assert main(["eval", "--fake", str(noisy), "--real", str(smooth_a), "--metrics", "swd", "--image-size", "48", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "8 outputs from" in out and "swd" in out and "lower is better" in out


def test_eval_errors_are_one_line(tmp_path, capsys, monkeypatch):
    images = write_images(tmp_path / "images", 3, True, 0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights"))
    assert main(["eval", "--fake", str(images), "--real", str(images), "--metrics", "fid"]) == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "--inception-weights" in err and err.count("\n") == 1
    assert main(["eval", "--fake", str(images), "--real", str(images), "--metrics", "speed"]) == 2
    assert "give --checkpoint" in capsys.readouterr().err
    assert main(["eval", "--fake", str(images), "--real", str(images), "--metrics", "swd,blur"]) == 2
    assert "unknown metric(s) blur" in capsys.readouterr().err
    assert main(["eval", "--real", str(images)]) == 2
    assert "--fake DIR" in capsys.readouterr().err


def test_outputs_pair_with_their_photos_by_name(tmp_path):
    photos = [tmp_path / "a.jpg", tmp_path / "b_1.jpg", tmp_path / "b.jpg"]
    fakes = [tmp_path / "b.png", tmp_path / "b_1_style2.png", tmp_path / "a_style0.png"]
    assert pair_sources(fakes, photos) == [photos[2], photos[1], photos[0]]
    assert pair_sources([tmp_path / "x.png", tmp_path / "y.png"], photos[:2]) == photos[:2]  # by order, warned
    with pytest.raises(ValueError, match="no photo of the same name"):
        pair_sources([tmp_path / "x.png"], photos)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A CycleGAN trained for 2 iterations with train.eval_every=1 (shared by the tests below)."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("GAN_STYLE_CACHE", str(cache))
    patch.setenv("TORCH_HOME", str(cache / "torch"))  # no Inception here: FID is not added
    try:
        run = tmp_path_factory.mktemp("run")
        trainer = Trainer(CycleGAN(tiny_config(max_steps=2, eval_every=1, eval_images=4)), run, show_progress=False)
        trainer.fit()
        yield run, trainer
    finally:
        patch.undo()


def test_training_logs_eval_scalars_and_keeps_best(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, trainer = tiny_run
    best = run / "checkpoints" / BEST
    assert best.is_file() and (run / "checkpoints" / "latest.pt").is_file()
    state = torch.load(best, weights_only=True)
    assert state["progress"]["step"] == int(state["eval_best"]["step"]) in (1, 2)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    swd = events.Scalars("eval/swd")
    assert [e.step for e in swd] == [1, 2] and {"eval/ssim"} <= set(events.Tags()["scalars"])
    # best.pt is the step with the lowest SWD.
    assert state["eval_best"]["value"] == pytest.approx(min(e.value for e in swd), rel=1e-5)
    # The evaluation images are the demo set's test split, the same at every evaluation.
    sources, real = trainer._evaluation_set()
    assert sources.shape == real.shape == (4, 3, 32, 32)


def test_evaluation_during_training_uses_the_averaged_weights(demo_cache, monkeypatch):
    import gan_style.evaluation as evaluation

    trainer = Trainer(CycleGAN(tiny_config(max_steps=3, eval_images=4, ema_decay=0.5)), show_progress=False)
    batch = trainer.method.synthetic_batch(32, 1, torch.Generator().manual_seed(0))
    for _ in range(3):
        trainer.train_step(batch)
    translations: list[torch.Tensor] = []
    monkeypatch.setattr(evaluation, "evaluate_images", lambda fakes, *args, **kwargs: translations.append(fakes) or {})
    trainer.evaluate()
    averages = trainer.ema.averages
    trainer.ema = None
    trainer.evaluate()  # the raw weights
    assert not torch.allclose(translations[0], translations[1])
    raw = {name: {k: v.detach().clone() for k, v in trainer.unwrapped(name).state_dict().items()} for name in averages}
    for name, average in averages.items():
        trainer.unwrapped(name).load_state_dict(average)
    trainer.evaluate()  # the raw networks holding the averages
    torch.testing.assert_close(translations[2], translations[0])
    for name in raw:
        trainer.unwrapped(name).load_state_dict(raw[name])
    assert all(net.training for net in trainer.inference_networks().values())  # modes restored


def test_eval_of_a_checkpoint_translates_and_times(tiny_run, capsys, demo_cache):
    from gan_style.data.demo import ensure_demo_dataset

    run, _ = tiny_run
    demo = ensure_demo_dataset()
    result = eval_json(capsys, "--checkpoint", str(run), "--input", str(demo / "testA"), "--real", str(demo / "testB"),
                       "--metrics", "swd,ssim,speed", "--limit", "3", "--image-size", "32", "--speed-images", "2")
    assert set(result) == {"swd", "ssim", "images_per_second"}
    assert result["images_per_second"] > 0 and 0 < result["ssim"] < 1
    assert main(["eval", "--checkpoint", str(run), "--input", str(demo / "testA"), "--real", str(demo / "testB"),
                 "--metrics", "lpips_diversity", "--limit", "2", "--device", "cpu"]) == 2
    assert "no random styles" in capsys.readouterr().err


def test_eval_config_is_checked():
    with pytest.raises(ConfigError, match="train.eval_every"):
        tiny_config(eval_every=-1)
    with pytest.raises(ConfigError, match="train.eval_metrics"):
        tiny_config(eval_metrics=("swd", "lpips"))
    with pytest.raises(ConfigError, match="train.eval_track"):
        tiny_config(eval_track="ssim", eval_metrics=("swd",))


def test_vangogh2photo_paintings_are_closer_to_paintings_than_photos(capsys):
    """On the real test sets: 24 photos (testB) and 24 training paintings (trainA) against the 50
    test paintings (testA), at 64 px to stay quick; the full-size figures are in docs/metrics.md."""
    root = require_shared(DATA / "vangogh2photo")
    common = ["--real", str(root / "testA"), "--metrics", "swd,ssim", "--limit", "24", "--image-size", "64"]
    photos = eval_json(capsys, "--fake", str(root / "testB"), "--input", str(root / "testB"), *common)
    paintings = eval_json(capsys, "--fake", str(root / "trainA"), "--input", str(root / "testB"), *common)
    assert paintings["swd"] < 0.5 * photos["swd"], (paintings, photos)
    assert photos["ssim"] == pytest.approx(1.0, abs=1e-5)  # untranslated: all content kept
    assert paintings["ssim"] < 0.4  # unrelated pictures share little structure
