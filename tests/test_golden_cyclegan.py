"""CycleGAN fidelity: reference checkpoints (in the reference's own format) load through the
official-checkpoint importer and reproduce the reference outputs (../shared/golden/cyclegan)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import GOLDEN, require_shared
from gan_style.cli import main as cli_main
from gan_style.hub import CheckpointLayoutError, import_reference_checkpoint, import_reference_state_dict
from gan_style.methods.cyclegan import CycleGAN, CycleGANConfig
from gan_style.nn.discriminators import DiscriminatorSpec, build_discriminator
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.layers import count_parameters

CYCLEGAN = GOLDEN / "cyclegan"
NETWORKS = [
    ("resnet_9blocks_ngf16", "G", ["64", "72x96"]),
    ("resnet_6blocks_ngf16", "G", ["64", "72x96"]),
    ("unet_128_ngf4", "G", ["128"]),
    ("unet_256_ngf4", "G", ["256"]),
    ("basic_ndf16", "D", ["64", "72x96"]),
    ("n_layers2_ndf16", "D", ["64", "72x96"]),
    ("pixel_ndf16", "D", ["64", "72x96"]),
]


@pytest.fixture(scope="module")
def cases():
    return torch.load(require_shared(CYCLEGAN / "cases.pt"), weights_only=True)


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The golden README's bound: max |out - ref| <= 1e-4 * min(1, max |ref|)."""
    assert out.shape == ref.shape
    bound = 1e-4 * min(1.0, ref.abs().max().item())
    assert (out - ref).abs().max().item() <= bound


@pytest.mark.parametrize("folder,kind,inputs", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_reference_network_outputs(cases, folder, kind, inputs):
    net = import_reference_checkpoint(require_shared(CYCLEGAN / folder / f"latest_net_{kind}.pth"))
    with torch.no_grad():
        for size in inputs:
            assert_matches(net(cases[f"x_{size}"]), cases[f"{folder}.out_{size}"])


def test_e2e_pipeline_tensor(cases):
    net = import_reference_checkpoint(require_shared(CYCLEGAN / "resnet_9blocks_ngf16" / "latest_net_G.pth"))
    with torch.no_grad():
        assert_matches(net(cases["e2e.input"]), cases["e2e.output"])


def test_translate_fit_resize_reproduces_reference_png(tmp_path):
    checkpoint = require_shared(CYCLEGAN / "resnet_9blocks_ngf16" / "latest_net_G.pth")
    status = cli_main([
        "translate", "--checkpoint", str(checkpoint), "--input", str(CYCLEGAN / "e2e_input.png"),
        "--output", str(tmp_path), "--fit", "resize", "--quiet",
    ])
    assert status == 0
    ours = np.asarray(Image.open(tmp_path / "e2e_input.png")).astype(int)
    expected = np.asarray(Image.open(CYCLEGAN / "e2e_expected.png")).astype(int)
    assert ours.shape == expected.shape == (152, 200, 3)
    difference = np.abs(ours - expected)
    assert difference.max() <= 1
    assert (difference > 0).sum() <= 0.001 * difference.size  # "a handful of pixels"


def test_importer_infers_architecture():
    net = import_reference_checkpoint(require_shared(CYCLEGAN / "unet_256_ngf4" / "latest_net_G.pth"))
    assert net.size_multiple == 256
    net = import_reference_checkpoint(CYCLEGAN / "resnet_6blocks_ngf16" / "latest_net_G.pth")
    assert sum(1 for _ in net.model if type(_).__name__ == "ResnetBlock") == 6


def test_importer_drops_stale_instance_norm_statistics_and_module_prefix():
    state = torch.load(require_shared(CYCLEGAN / "resnet_6blocks_ngf16" / "latest_net_G.pth"), weights_only=True)
    # What a pre-0.4 PyTorch saved, wrapped in DataParallel.
    old = {f"module.{k}": v for k, v in state.items()}
    old["module.model.2.running_mean"] = torch.zeros(16)
    old["module.model.2.running_var"] = torch.ones(16)
    net, spec = import_reference_state_dict(old)
    assert spec.kind == "resnet_6blocks" and spec.ngf == 16 and spec.norm == "instance"


def test_importer_error_lists_what_did_not_match():
    state = torch.load(require_shared(CYCLEGAN / "resnet_9blocks_ngf16" / "latest_net_G.pth"), weights_only=True)
    state["model.10.conv_block.1.weight"] = torch.zeros(64, 64, 5, 5)  # a wrong kernel size
    with pytest.raises(CheckpointLayoutError) as info:
        import_reference_state_dict(state, "broken.pth")
    message = str(info.value)
    assert "broken.pth" in message and "model.10.conv_block.1.weight" in message and "(64, 64, 5, 5)" in message
    with pytest.raises(CheckpointLayoutError, match="fits no known reference layout"):
        import_reference_state_dict({"encoder.weight": torch.zeros(3)}, "other.pth")


def test_our_networks_roundtrip_through_the_importer():
    """A state dict of our own networks is a reference state dict: it imports to the same spec."""
    for spec in [GeneratorSpec("resnet_9blocks", 8, "batch"), GeneratorSpec("unet_128", 4, "none")]:
        net = build_generator(spec)
        _, inferred = import_reference_state_dict(net.state_dict())
        assert (inferred.kind, inferred.ngf, inferred.norm) == (spec.kind, spec.ngf, spec.norm)
    for spec in [DiscriminatorSpec("basic", 8, 3, "batch"), DiscriminatorSpec("n_layers", 8, 5, "instance"), DiscriminatorSpec("pixel", 8)]:
        net = build_discriminator(spec)
        _, inferred = import_reference_state_dict(net.state_dict())
        assert (inferred.kind, inferred.ndf, inferred.norm) == (spec.kind, spec.ndf, spec.norm)
        if spec.kind != "pixel":
            assert inferred.n_layers == spec.n_layers


# Full-size parameter counts from the golden README.
FULL_SIZE_COUNTS = {
    "resnet_9blocks": 11_378_179,
    "resnet_6blocks": 7_837_699,
    "unet_128": 41_825_667,
    "unet_256": 54_409_603,
}


@pytest.mark.parametrize("kind,count", FULL_SIZE_COUNTS.items())
def test_full_size_generator_parameter_counts(kind, count):
    assert count_parameters(build_generator(GeneratorSpec(kind))) == count


def test_full_size_discriminator_parameter_counts():
    assert count_parameters(build_discriminator(DiscriminatorSpec("basic"))) == 2_764_737
    assert count_parameters(build_discriminator(DiscriminatorSpec("n_layers", n_layers=2))) == 662_977
    assert count_parameters(build_discriminator(DiscriminatorSpec("pixel"))) == 8_705


def test_cyclegan_default_networks_are_the_paper_ones():
    nets = CycleGAN(CycleGANConfig()).build_networks()
    assert count_parameters(nets["G_A"]) == count_parameters(nets["G_B"]) == 11_378_179
    assert count_parameters(nets["D_A"]) == count_parameters(nets["D_B"]) == 2_764_737
