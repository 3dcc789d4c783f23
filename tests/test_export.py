"""gan-style export: every method's inference path as ONNX (run by onnxruntime) and TorchScript
matches PyTorch at two input sizes; a safetensors folder reloads (without pickle) to identical
outputs; the EMA weights are the ones exported."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import gan_style
from conftest import assert_golden_close
from gan_style.cli import main as cli_main
from gan_style.engine.checkpoint import load_checkpoint
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.errors import CheckpointError
from gan_style.export import export_model, run_exported
from gan_style.methods import get_method
from gan_style.methods.munit import random_style
from gan_style.nn.stylegan2 import NoiseInjection

#: two sizes (H, W) per test, multiples of every smoke network's size multiple, and batch sizes
SIZES = (((32, 48), 1), ((48, 80), 2))
WITH_EMA = ("cyclegan", "cut", "fastcut", "sincut", "munit", "swapae")


def train_one_step(name: str, folder: Path) -> Path:
    """A run of ``name``'s smoke preset, one step (with weight averages where the method has them)."""
    train = {"max_steps": 1}
    if name in WITH_EMA:
        train |= {"ema_decay": 0.5, "ema_start_step": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(get_method(name)(config_from_overrides(get_method(name), "smoke", {"train": train})), folder, show_progress=False).fit()
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> a one-step run folder of each method (built once for this file)."""
    root = tmp_path_factory.mktemp("export_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GAN_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "gan_style_cache"))
        yield {name: train_one_step(name, root / name) for name in ("cyclegan", "cut", "fastcut", "sincut", "munit", "swapae", "adain")}


def loaded(run: Path):
    model = gan_style.load(run, device="cpu")
    # Noise strengths start at 0: make them count, so that the noise inputs are tested.
    for module in model.networks.values():
        for layer in module.modules():
            if isinstance(layer, NoiseInjection):
                layer.weight.data.fill_(0.5)
    return model


def images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def noise_maps(entry: dict, batch: int, height: int, width: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The noise inputs as the generator draws them itself: one N(0, 1) map per noise layer, in
    order, at its side factor (from the manifest), from ``generator`` (None: torch's global one)."""
    names = [spec["name"] for spec in entry["inputs"] if spec["name"].startswith("noise")]
    return {name: torch.randn(batch, 1, round(height * f), round(width * f), generator=generator)
            for name, f in zip(names, entry.get("noise_side_factors", []))}


def pipelines(model, manifest: dict, fmt: str, folder: Path):
    """(name, reference(x), exported(x)) for each of the method's inference paths, at an input x."""
    modules = manifest["modules"]

    def call(module: str, **inputs):
        path = folder / modules[module]["file"] if len(modules) > 1 else folder
        return run_exported(path, fmt, inputs)

    method = model.method
    if method in ("cyclegan", "cut", "sincut"):
        entry = modules["generator"]

        def reference(x):
            torch.manual_seed(7)  # SinCUT draws its noise from torch's global generator
            return model.bind("AtoB")[0](x)

        def exported(x):
            torch.manual_seed(7)  # the same draws, in the same order
            return call("generator", image=x, **noise_maps(entry, x.shape[0], x.shape[-2], x.shape[-1], None))[0]

        yield method, reference, exported
    elif method == "munit":
        style_dim = model.networks["G_B"].spec.style_dim
        code = random_style(style_dim, seed=3)
        yield ("munit random style", lambda x: model.bind("AtoB", seed=3)[0](x),
               lambda x: call("decoder", content=call("content_encoder", image=x)[0], style=code.expand(x.shape[0], -1, -1, -1).contiguous())[0])
        example = images(1, 40, 36, seed=5)
        yield ("munit example style", lambda x: model.bind("AtoB", style=example)[0](x),
               lambda x: call("decoder", content=call("content_encoder", image=x)[0],
                              style=call("style_encoder", image=example)[0].expand(x.shape[0], -1, -1, -1).contiguous())[0])
    elif method == "swapae":
        texture = images(1, 40, 44, seed=6)
        entry = modules["generator"]

        def exported(x):
            structure, own = call("encoder", image=x)
            target = call("encoder", image=texture)[1]
            mixed = torch.lerp(own, target.expand_as(own), 0.6)
            # the translator's noise: one map per layer, shared by the batch
            noise = noise_maps(entry, 1, structure.shape[-2], structure.shape[-1], torch.Generator().manual_seed(2))
            noise = {name: n.expand(x.shape[0], -1, -1, -1).contiguous() for name, n in noise.items()}
            return call("generator", structure=structure, texture=mixed, **noise)[0]

        yield "swapae swap", lambda x: model.bind("AtoB", texture=texture, alpha=0.6, seed=2)[0](x), exported
    elif method == "adain":
        style = images(1, 36, 44, seed=8)
        yield ("adain", lambda x: model.bind("AtoB", style=style, alpha=0.6)[0](x),
               lambda x: call("stylizer", content=x, style=style, alpha=torch.tensor(0.6))[0])


PARITY = ("cyclegan", "cut", "sincut", "munit", "swapae", "adain")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", PARITY)
def test_exported_graphs_match_pytorch_at_two_sizes(name, fmt, runs, tmp_path):
    pytest.importorskip("onnxruntime")
    model = loaded(runs[name])
    one_module = name in ("cyclegan", "cut", "sincut", "adain")
    out = tmp_path / ("model" + (".onnx" if fmt == "onnx" else ".pt") if one_module else "model")
    manifest = export_model(model, fmt, out, check=False)
    for label, reference, exported in pipelines(model, manifest, fmt, out):
        for (height, width), batch in SIZES:
            x = images(batch, height, width, seed=height)
            with torch.no_grad():
                ref = reference(x)
            error = assert_golden_close(exported(x), ref, f"{label} {fmt} {height}x{width}")
            print(f"parity {label} {fmt} {batch}x{height}x{width}: max abs error {error:.2e}")


def test_the_export_checks_itself_and_describes_its_modules(runs, tmp_path, capsys):
    out = tmp_path / "munit"
    assert cli_main(["export", "--checkpoint", str(runs["munit"]), "--format", "torchscript", "--output", str(out), "--direction", "BtoA"]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["direction"] == "BtoA" and set(manifest["modules"]) == {"content_encoder", "style_encoder", "decoder"}
    assert all((out / entry["file"]).is_file() for entry in manifest["modules"].values())
    assert all(entry["check_max_abs_error"] < 1e-4 for entry in manifest["modules"].values())
    assert "decoder: decoder.pt (content, style -> output; matches PyTorch" in capsys.readouterr().out
    assert cli_main(["export", "--checkpoint", str(runs["fastcut"]), "--format", "onnx", "--output", str(tmp_path / "g.onnx")]) == 0
    assert "generator: g.onnx (image -> output; matches PyTorch" in capsys.readouterr().out
    outputs = run_exported(tmp_path / "g.onnx", "onnx", {"image": images(3, 32, 48, 0)})
    assert outputs is not None and outputs[0].shape == (3, 3, 32, 48)


def test_export_errors_name_the_problem(runs, tmp_path, capsys):
    assert cli_main(["export", "--checkpoint", str(runs["cut"]), "--format", "onnx", "--output", str(tmp_path)]) == 2
    assert "is a folder; cut exports one file" in capsys.readouterr().err
    assert cli_main(["export", "--checkpoint", str(runs["cut"]), "--format", "onnx", "--output", str(tmp_path / "g.onnx"), "--direction", "BtoA"]) == 2
    assert "translates one way" in capsys.readouterr().err
    assert cli_main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx", "--output", str(tmp_path / "g.onnx")]) == 2


@pytest.mark.parametrize("name", ["cyclegan", "fastcut", "sincut", "munit", "swapae", "adain"])
def test_a_safetensors_folder_reloads_to_identical_outputs(name, runs, tmp_path):
    folder = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(runs[name]), "--format", "safetensors", "--output", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    original, again = gan_style.load(runs[name], device="cpu"), gan_style.load(folder, device="cpu")
    assert again.method == name and again.step == 1 and again.averaged == original.averaged
    x = images(2, 32, 48, seed=1)
    extra = {"style": images(1, 32, 32, 2), "alpha": 0.5} if name == "adain" else {"texture": images(1, 32, 32, 3)} if name == "swapae" else {}
    for direction in original.directions:
        torch.manual_seed(0)
        expected = original.translate(x, direction=direction, **extra)
        torch.manual_seed(0)
        assert torch.equal(again.translate(x, direction=direction, **extra), expected), direction
    # the file itself, too, and the original's weights exactly
    assert gan_style.load(folder / "model.safetensors", device="cpu").method == name
    for net_name, net in again.networks.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, original.networks[net_name].state_dict()[key]), f"{net_name}.{key}"


def test_the_ema_weights_are_exported(runs, tmp_path):
    state = load_checkpoint(runs["cut"] / "checkpoints" / "latest.pt")
    averaged, last = state["ema"]["G"], state["networks"]["G"]
    assert any(not torch.equal(averaged[k], last[k]) for k in last), "the run keeps an average unlike the last weights"
    export_model(gan_style.load(runs["cut"], device="cpu"), "safetensors", tmp_path / "ema")
    exported = gan_style.load(tmp_path / "ema", device="cpu")
    assert exported.averaged
    assert all(torch.equal(value, averaged[key]) for key, value in exported.networks["G"].state_dict().items())
    assert cli_main(["export", "--checkpoint", str(runs["cut"]), "--format", "safetensors", "--output", str(tmp_path / "last"), "--no-ema"]) == 0
    plain = gan_style.load(tmp_path / "last", device="cpu")
    assert not plain.averaged and all(torch.equal(value, last[key]) for key, value in plain.networks["G"].state_dict().items())


def test_a_damaged_safetensors_folder_is_refused(runs, tmp_path):
    folder = tmp_path / "export"
    export_model(gan_style.load(runs["cut"], device="cpu"), "safetensors", folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors export"):
        gan_style.load(folder, device="cpu")
