"""The Swapping Autoencoder's encoder E and generator G, and the importer of the reference
checkpoint, against the reference's outputs (shared/golden/sae, README section ``sae/``): the tiny
checkpoint is imported through ``gan_style.hub.swapae`` and every E / G case must match within
max|out - ref| <= 1e-4 * min(1, max|ref|). Also the parameter counts (tiny and full size), the
inference of non-default options, and the rejection of files that are not SAE checkpoints.
(D and Dpatch parity: tests/test_golden_sae_discriminators.py.)
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch

from conftest import GOLDEN, require_shared
from conftest import assert_golden_close as assert_close
from gan_style.engine.checkpoint import read_weights
from gan_style.hub.errors import LayoutMismatch
from gan_style.hub.swapae import (
    encoder_candidates,
    generator_candidates,
    import_swapae_checkpoint,
    is_swapae_state,
)
from gan_style.nn.layers import count_parameters
from gan_style.nn.swapae import SwapAEEncoder, SwapAEEncoderSpec, SwapAEGenerator, SwapAEGeneratorSpec

SAE = GOLDEN / "sae"


@pytest.fixture(autouse=True)
def _one_thread():
    # the goldens were computed with one thread; reductions then sum in the same order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return torch.load(require_shared(SAE / "cases.pt"), weights_only=True)


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return read_weights(require_shared(SAE / "latest_checkpoint.pth"))


@pytest.fixture(scope="module")
def imported(checkpoint):
    return import_swapae_checkpoint(checkpoint)


def meta_state(net_class, spec, prefix: str) -> dict[str, torch.Tensor]:
    """A state dict with the right keys and shapes but no data (meta tensors): enough for inference."""
    with torch.device("meta"):
        net = net_class(spec)
    return {f"{prefix}{k}": v for k, v in net.state_dict().items()}


# -- the importer on the reference checkpoint -----------------------------------------------------
def test_import_infers_the_reference_options(imported):
    nets, options = imported
    assert set(nets) == {"E", "G"}  # saved with --lambda_GAN 0 --lambda_PatchGAN 0: no D / Dpatch
    assert options == {
        "spatial_code_ch": 8,
        "global_code_ch": 64,
        "netE_scale_capacity": 0.25,
        "netE_num_downsampling_sp": 2,
        "netE_num_downsampling_gl": 2,
        "netE_nc_steepness": 2.0,
        "use_antialias": True,
        "netG_scale_capacity": 0.125,
        "netG_num_base_resnet_layers": 2,
        "netG_use_noise": True,
        "crop_size": 64,
        "num_discriminator_iters": 0,
    }
    assert not nets["E"].training and not nets["G"].training


def test_tiny_parameter_counts(imported):
    nets, _ = imported
    assert count_parameters(nets["E"]) == 70_288
    assert count_parameters(nets["G"]) == 126_915


def test_full_size_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no init
        assert count_parameters(SwapAEEncoder()) == 30_584_872
        assert count_parameters(SwapAEGenerator()) == 25_064_743


def test_encoder_matches_reference(imported, cases):
    E = imported[0]["E"]
    with torch.no_grad():
        structure, texture = E(cases["x"])
        assert_close(structure, cases["E.structure_code"], "E.structure_code")
        assert_close(texture, cases["E.texture_code"], "E.texture_code")
        assert_close(E.extract_features(cases["x"]), cases["E.extract_features_feature"], "E.extract_features_feature")
    # L2-normalised over the channels
    torch.testing.assert_close(structure.pow(2).sum(1), torch.ones(2, 16, 16))
    torch.testing.assert_close(texture.pow(2).sum(1), torch.ones(2))


def test_generator_matches_reference(imported, cases):
    E, G = imported[0]["E"], imported[0]["G"]
    with torch.no_grad():
        structure, texture = E(cases["x"])
        assert_close(G(structure, texture), cases["G.rec"], "G.rec")
        assert_close(G(structure[:1], texture[1:]), cases["G.swap_s0_t1"], "G.swap_s0_t1")
        # as in training: image 2k takes the structure of image 2k + 1 and the other way round
        assert_close(G(structure[[1, 0]], texture), cases["G.mix_swapped_pairs"], "G.mix_swapped_pairs")


def test_generator_noise_matches_reference(checkpoint, cases):
    G = import_swapae_checkpoint(checkpoint)[0]["G"]  # a fresh copy: the strengths are changed below
    E = import_swapae_checkpoint(checkpoint)[0]["E"]
    fixed = [cases[f"G.fixed_noise_{j}"] for j in range(8)]
    with torch.no_grad():
        for name, strength in zip(G.noise_layers, cases["G.noise_weight_override"]):
            G.get_submodule(name).weight.fill_(strength)
        structure, texture = E(cases["x"])
        assert_close(G(structure[:1], texture[1:], fixed_noise=fixed), cases["G.swap_s0_t1_noisy"], "G.swap_s0_t1_noisy")
        # the noise matters now, and an explicit generator makes it reproducible
        a = G(structure, texture, noise=torch.Generator().manual_seed(1))
        b = G(structure, texture, noise=torch.Generator().manual_seed(1))
        c = G(structure, texture, noise=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    with pytest.raises(ValueError, match="one map per StyledConv"):
        G(structure, texture, fixed_noise=fixed[:3])


def test_noise_free_at_init(imported, cases):
    """The stored strengths are 0: outputs do not depend on the noise (README: verified)."""
    E, G = imported[0]["E"], imported[0]["G"]
    with torch.no_grad():
        structure, texture = E(cases["x"])
        a = G(structure, texture, noise=torch.Generator().manual_seed(1))
        b = G(structure, texture, noise=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- inference of other options -------------------------------------------------------------------
def test_full_size_defaults_are_inferred():
    state = meta_state(SwapAEEncoder, SwapAEEncoderSpec(), "E.") | meta_state(SwapAEGenerator, SwapAEGeneratorSpec(), "G.")
    assert is_swapae_state(state)
    assert encoder_candidates({k[2:]: v for k, v in state.items() if k.startswith("E.")})[0] == SwapAEEncoderSpec()
    assert generator_candidates({k[2:]: v for k, v in state.items() if k.startswith("G.")})[0] == SwapAEGeneratorSpec()


@pytest.mark.parametrize(
    ("e_spec", "g_spec"),
    [
        (
            SwapAEEncoderSpec(4, 32, scale_capacity=0.125, num_downsampling_sp=3, num_downsampling_gl=1, antialias=False),
            SwapAEGeneratorSpec(4, 32, scale_capacity=0.0625, num_base_resnet_layers=1, num_downsampling=3, up_block_names_from=8),
        ),
        (
            SwapAEEncoderSpec(8, 48, scale_capacity=0.3, num_downsampling_sp=2, num_downsampling_gl=2),
            SwapAEGeneratorSpec(8, 48, scale_capacity=0.1, num_base_resnet_layers=3, num_downsampling=2),
        ),
    ],
)
def test_import_round_trip(e_spec, g_spec):
    torch.manual_seed(0)
    E, G = SwapAEEncoder(e_spec).eval(), SwapAEGenerator(g_spec).eval()
    state = {f"E.{k}": v for k, v in E.state_dict().items()} | {f"G.{k}": v for k, v in G.state_dict().items()}
    nets, options = import_swapae_checkpoint(state, use_noise=g_spec.use_noise)
    # a rounded width pins the capacity down to an interval only: same widths, all else equal
    for spec, original in ((nets["E"].spec, e_spec), (nets["G"].spec, g_spec)):
        assert replace(spec, scale_capacity=original.scale_capacity) == original
    assert [nets["E"].spec.channels(i) for i in range(6)] == [e_spec.channels(i) for i in range(6)]
    assert options["netE_num_downsampling_sp"] == e_spec.num_downsampling_sp and options["use_antialias"] == e_spec.antialias
    assert options["crop_size"] == g_spec.up_block_names_from * 2**g_spec.num_downsampling
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes, imported_codes = E(x), nets["E"](x)
        torch.testing.assert_close(imported_codes, codes, rtol=0, atol=0)
        torch.testing.assert_close(nets["G"](*codes), G(*codes), rtol=0, atol=0)


def test_fixed_noise_entries_are_returned(checkpoint, imported, cases):
    G = imported[0]["G"]
    state = dict(checkpoint)
    for j, name in enumerate(G.noise_layers):
        state[f"G.{name}.fixed_noise"] = cases[f"G.fixed_noise_{j}"]
    nets, options = import_swapae_checkpoint(state)
    assert len(options["fixed_noise"]) == 8
    torch.testing.assert_close(options["fixed_noise"][6], cases["G.fixed_noise_6"], rtol=0, atol=0)


# -- D and Dpatch through the importer (synthetic weights of the manifest) -------------------------
def test_discriminators_are_imported(checkpoint, cases):
    manifest = json.loads(require_shared(SAE / "synthetic_D_Dpatch_manifest.json").read_text())
    state = OrderedDict(checkpoint)
    for entry in manifest["D"] + manifest["Dpatch"]:
        key = entry["key"]
        if entry["kind"] == "parameter":
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            state[key] = torch.randn(entry["shape"], generator=g) * (0.1 if key.endswith("bias") else 1.0)
        else:
            state[key] = torch.tensor(entry["value"], dtype=getattr(torch, entry["dtype"]))
    nets, options = import_swapae_checkpoint(state)
    assert set(nets) == {"E", "G", "D", "Dpatch"}
    assert options["crop_size"] == 64 and options["netD_scale_capacity"] == 1.0
    assert (options["patch_size"], options["netPatchD_scale_capacity"], options["netPatchD_max_nc"]) == (32, 4.0, 384)
    with torch.no_grad():
        assert_close(nets["D"](cases["x"]), cases["D.out_x"], "D.out_x")
        Dpatch = nets["Dpatch"]
        reference = Dpatch.extract_features(cases["Dpatch.crops_real"], aggregate=True)
        judged = Dpatch.extract_features(cases["Dpatch.crops_mix"])
        assert_close(Dpatch.discriminate_features(reference, judged), cases["Dpatch.pred_real_vs_mix"], "Dpatch.pred_real_vs_mix")


# -- rejection ------------------------------------------------------------------------------------
def test_non_sae_state_is_rejected():
    cyclegan = {"model.1.weight": torch.zeros(16, 3, 7, 7), "model.1.bias": torch.zeros(16)}
    assert not is_swapae_state(cyclegan)
    with pytest.raises(LayoutMismatch, match=r"no 'E\.\*' and 'G\.\*' keys .*model\.1\.weight"):
        import_swapae_checkpoint(cyclegan)


def test_broken_sae_state_names_the_mismatch(checkpoint):
    extra = dict(checkpoint) | {"F.mlp_0.0.weight": torch.zeros(2, 2)}
    with pytest.raises(LayoutMismatch, match=r"keys outside .*F\.mlp_0\.0\.weight"):
        import_swapae_checkpoint(extra)
    wrong = dict(checkpoint) | {"G.ToRGB.bias": torch.zeros(1, 4, 1, 1)}
    with pytest.raises(LayoutMismatch, match=r"generator .*ToRGB\.bias: file \(1, 4, 1, 1\) vs model \(1, 3, 1, 1\)"):
        import_swapae_checkpoint(wrong)
    missing = {k: v for k, v in checkpoint.items() if k != "E.ToGlobalCode.0.weight"}
    with pytest.raises(LayoutMismatch, match=r"encoder .*no 'ToGlobalCode\.0\.weight' key"):
        import_swapae_checkpoint(missing)
