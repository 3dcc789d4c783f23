"""The Swapping Autoencoder's discriminators D and Dpatch against the reference's outputs with
synthetic weights (shared/golden/sae, README section ``sae/``: the weights are regenerated from
``synthetic_D_Dpatch_manifest.json``), the full-size parameter counts, and the random crops'
statistics (the reference's RNG stream cannot be matched, so cases.pt gives the crops as inputs).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN, require_shared
from conftest import assert_golden_close as assert_close
from gan_style.nn.layers import count_parameters
from gan_style.nn.swapae_discriminators import (
    PatchCooccurrenceDiscriminator,
    PatchDiscriminatorSpec,
    SwapAEDiscriminator,
    SwapAEDiscriminatorSpec,
    random_crops,
)

SAE = GOLDEN / "sae"
TINY_D = SwapAEDiscriminatorSpec(crop_size=64, scale_capacity=1.0)
TINY_DPATCH = PatchDiscriminatorSpec(patch_size=32, scale_capacity=4.0, max_nc=384)


def synthetic_state_dict(entries: list[dict], prefix: str) -> dict[str, torch.Tensor]:
    """The README's rule: parameter k ~ randn(seed crc32(k)) * (0.1 for biases, else 1), checked
    against the manifest's sums; buffers are literal. Keys lose ``prefix``."""
    sd = {}
    for e in entries:
        k = e["key"]
        if e["kind"] == "parameter":
            g = torch.Generator().manual_seed(zlib.crc32(k.encode()))
            v = torch.randn(e["shape"], generator=g) * (0.1 if k.endswith("bias") else 1.0)
            assert abs(float(v.double().sum()) - e["sum"]) <= 1e-6 * max(1.0, abs(e["sum"])), k
        else:
            v = torch.tensor(e["value"], dtype=getattr(torch, e["dtype"]))
        assert k.startswith(prefix), k
        sd[k[len(prefix) :]] = v
    return sd




@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return torch.load(require_shared(SAE / "cases.pt"), weights_only=True)


@pytest.fixture(scope="module")
def manifest() -> dict[str, list[dict]]:
    return json.loads(Path(require_shared(SAE / "synthetic_D_Dpatch_manifest.json")).read_text())


def load_strictly(net: torch.nn.Module, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    # same keys in the same order as the reference's state dict, then a strict load (shapes too)
    assert list(net.state_dict()) == list(sd)
    net.load_state_dict(sd, strict=True)
    return net.eval()


# -- golden parity --------------------------------------------------------------------------------
@torch.no_grad()
def test_image_discriminator(cases, manifest):
    D = load_strictly(SwapAEDiscriminator(TINY_D), synthetic_state_dict(manifest["D"], "D."))
    # one batched call for both cases: D treats every image on its own
    out = D(torch.cat([cases["x"], cases["G.rec"]]))
    assert_close(out[:2], cases["D.out_x"], "D.out_x")
    assert_close(out[2:], cases["D.out_rec"], "D.out_rec")


@torch.no_grad()
def test_patch_cooccurrence_discriminator(cases, manifest):
    Dpatch = load_strictly(PatchCooccurrenceDiscriminator(TINY_DPATCH), synthetic_state_dict(manifest["Dpatch"], "Dpatch."))
    real, mix = cases["Dpatch.crops_real"], cases["Dpatch.crops_mix"]
    feat_real = Dpatch.extract_features(real)
    assert_close(feat_real, cases["Dpatch.feat_real"], "Dpatch.feat_real")
    reference = Dpatch.extract_features(real, aggregate=True)
    assert_close(Dpatch.discriminate_features(reference, feat_real), cases["Dpatch.pred_real_vs_real"], "Dpatch.pred_real_vs_real")
    assert_close(Dpatch.discriminate_features(reference, Dpatch.extract_features(mix)), cases["Dpatch.pred_real_vs_mix"], "Dpatch.pred_real_vs_mix")
    assert_close(Dpatch(real, mix), cases["Dpatch.pred_real_vs_mix"], "Dpatch(real, mix)")


def test_aggregated_features_are_the_per_image_mean():
    Dpatch = PatchCooccurrenceDiscriminator(PatchDiscriminatorSpec(patch_size=8, scale_capacity=0.25, max_nc=16)).eval()
    with torch.no_grad():
        patches = torch.randn(2, 3, 3, 8, 8)
        single, aggregated = Dpatch.extract_features(patches), Dpatch.extract_features(patches, aggregate=True)
    expected = single.view(2, 3, *single.shape[1:]).mean(1, keepdim=True).expand(-1, 3, -1, -1, -1).reshape(single.shape)
    torch.testing.assert_close(aggregated, expected)
    assert single.shape == (6, 16, 2, 2)


# -- parameter counts (no golden files needed) ----------------------------------------------------
def test_parameter_counts():
    with torch.device("meta"):
        tiny = SwapAEDiscriminator(TINY_D), PatchCooccurrenceDiscriminator(TINY_DPATCH)
        full = SwapAEDiscriminator(), PatchCooccurrenceDiscriminator()
    assert [count_parameters(net) for net in tiny] == [26_484_225, 24_376_065]
    assert [count_parameters(net) for net in full] == [28_859_521, 24_522_145]
    # full size: D's table 128, 256, 512, ... from 256x256 down; names convs.1 - convs.6, convs.128x128 above 64 for Dpatch
    assert [k for k in full[0].state_dict() if k.endswith("conv1.Conv.weight")][0] == "stylegan2_D.convs.1.conv1.Conv.weight"
    assert full[0].stylegan2_D.convs[0][0].weight.shape == (128, 3, 1, 1)
    assert "convs.128x128.conv1.Conv.weight" in full[1].state_dict()
    assert full[1].convs[0][0].weight.shape == (32, 3, 3, 3)


def test_discriminators_refuse_wrong_sizes():
    with torch.device("meta"):
        D, Dpatch = SwapAEDiscriminator(TINY_D), PatchCooccurrenceDiscriminator(TINY_DPATCH)
        with pytest.raises(ValueError, match="64x64"):
            D(torch.zeros(1, 3, 32, 32))
        with pytest.raises(ValueError, match="32x32"):
            Dpatch.extract_features(torch.zeros(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="max_nc"):
        PatchCooccurrenceDiscriminator(PatchDiscriminatorSpec(patch_size=32, scale_capacity=1.0, max_nc=384))


# -- random crops ---------------------------------------------------------------------------------
def coordinate_image(size: int) -> torch.Tensor:
    """(1, 3, size, size): channel 0 = normalised x of each pixel centre, 1 = y, 2 = 0. Bilinear
    sampling of a linear function is exact, so a crop's values reveal its affine map."""
    ramp = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack([x, y, torch.zeros_like(x)])[None]


def test_random_crops_statistics():
    # large enough that every sample lies between pixel centres (no zero padding blended in)
    image = coordinate_image(256).expand(2, -1, -1, -1)
    P, min_scale, max_scale = 32, 0.125, 0.25
    crops = random_crops(image, 300, min_scale, max_scale, P, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (2, 300, 3, P, P) and crops.dtype == image.dtype
    x, y = crops[:, :, 0], crops[:, :, 1]
    span = 2 * (P - 1) / P  # normalised distance from the first to the last output pixel centre
    scale_x = (x[..., 0, -1] - x[..., 0, 0]) / span  # signed: negative when flipped
    scale_y = (y[..., -1, 0] - y[..., 0, 0]) / span
    # the map is affine with no rotation or shear: x depends on the column only, y on the row only
    torch.testing.assert_close(x, x[..., :1, :].expand_as(x))
    torch.testing.assert_close(y, y[..., :1].expand_as(y))
    eps = 1e-9
    for scale in (scale_x.abs(), scale_y):
        assert scale.min() >= min_scale - eps and scale.max() <= max_scale + eps
        assert scale.min() < min_scale + 0.01 and scale.max() > max_scale - 0.01  # the whole range is used
    assert (scale_x.abs() - scale_y).abs().max() > 0.05  # the two axes are drawn independently
    # every crop lies inside the image
    assert x.abs().max() <= 1 and y.abs().max() <= 1
    flipped = (scale_x < 0).double().mean().item()
    assert 0.4 < flipped < 0.6  # 600 fair coin flips: 5 standard deviations
    centre_x = x.mean(dim=(-2, -1))
    assert centre_x.min() < -0.5 and centre_x.max() > 0.5  # offsets cover the image


def test_random_crops_full_scale_is_a_resize():
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    crops = random_crops(images, 16, 1.0, 1.0, 24, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    for b in range(2):
        for t in range(16):
            crop = crops[b, t]
            # the only freedom left at scale 1 is the flip
            target = resized[b] if (crop - resized[b]).abs().max() < 1e-3 else resized[b].flip(-1)
            torch.testing.assert_close(crop, target, atol=1e-5, rtol=0)


def test_random_crops_follow_the_generator():
    images = torch.rand(1, 3, 32, 32)
    first, again = (random_crops(images, 4, 0.25, 0.5, 8, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    with pytest.raises(ValueError, match="scales"):
        random_crops(images, 4, 0.5, 0.25, 8)
