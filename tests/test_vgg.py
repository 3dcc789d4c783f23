"""VGG-19 feature extractor (torchvision layout), its weight lookup, and the perceptual losses.

No pretrained weights exist on the test machines: the weight file is written here, in
torchvision's layout, from seeded random weights (the features built by torchvision's own
``make_layers``, so the layout is checked against torchvision rather than against our code), and
loaded through the same ``load_vgg19`` a user calls.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gan_style.losses.perceptual import (
    PerceptualLoss,
    channel_mean_std,
    content_loss,
    gram_matrix,
    mean_std_style_loss,
    style_loss,
    total_variation_loss,
)
from gan_style.nn.vgg import (
    TORCHVISION_VGG19_FILE,
    TORCHVISION_VGG19_URL,
    VGG19_LAYER_NAMES,
    VGG19Features,
    WeightsNotFoundError,
    load_vgg19,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def torchvision_vgg19_features(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's VGG init, plus non-zero biases
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    return features.eval()


def write_torchvision_vgg19(path, seed: int = 0) -> nn.Sequential:
    """``vgg19-dcbb9e9d.pth``'s layout: torchvision ``VGG.state_dict()`` keys, in the pre-zip
    serialisation of the real file (2017). The classifier (unused here, 470 MB in the real file)
    is stored as zero-stride tensors of the right shapes."""
    features = torchvision_vgg19_features(seed)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}.items():
        state[f"{name}.weight"] = torch.zeros(1).expand(*shape)
        state[f"{name}.bias"] = torch.zeros(1).expand(shape[0])
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return features


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / TORCHVISION_VGG19_FILE
    features = write_torchvision_vgg19(path)
    return path, features


def test_state_dict_keys_match_torchvision():
    ours = set(VGG19Features().state_dict())
    theirs = {f"features.{k}" for k in torchvision.models.vgg19().features.state_dict()}
    assert ours == theirs
    assert VGG19_LAYER_NAMES[1] == "relu1_1" and VGG19_LAYER_NAMES[22] == "relu4_2" and VGG19_LAYER_NAMES[29] == "relu5_1"
    assert len(VGG19_LAYER_NAMES) == 37 and VGG19_LAYER_NAMES[-1] == "pool5"


def test_loaded_features_equal_torchvision(vgg_file):
    path, reference = vgg_file
    vgg = load_vgg19(path)
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.training
    image = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1", "pool5"]
    ours = vgg(image, names)
    x = (image - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        for index, layer in enumerate(reference):
            x = layer(x)
            name = VGG19_LAYER_NAMES[index]
            if name in ours:
                torch.testing.assert_close(ours[name], x, rtol=1e-4, atol=1e-5)
    # Inputs in [-1, 1]: the same features once the module is told so.
    signed = load_vgg19(path, input_range=(-1.0, 1.0))
    torch.testing.assert_close(signed(image * 2 - 1, ["relu3_1"])["relu3_1"], ours["relu3_1"], rtol=1e-4, atol=1e-5)


def test_stops_after_deepest_requested_layer(vgg_file):
    vgg = load_vgg19(vgg_file[0])
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, layer in enumerate(vgg.features)]
    vgg(torch.rand(1, 3, 32, 32), ["relu2_1", "relu1_1"])
    for hook in hooks:
        hook.remove()
    assert ran == list(range(VGG19_LAYER_NAMES.index("relu2_1") + 1))
    with pytest.raises(KeyError, match="relu9_9"):
        vgg(torch.rand(1, 3, 32, 32), ["relu9_9"])


def test_caffe_preprocessing_and_avg_pooling():
    vgg = VGG19Features(preprocessing="caffe", pooling="avg")
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # RGB
    expected = torch.tensor([0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68]).view(1, 3, 1, 1)  # BGR
    torch.testing.assert_close(vgg.preprocess(pixel), expected)
    assert isinstance(vgg.features[4], nn.AvgPool2d)
    assert set(vgg.state_dict()) == set(VGG19Features().state_dict())


def test_found_in_torch_hub_cache(vgg_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / TORCHVISION_VGG19_FILE).symlink_to(vgg_file[0])
    vgg = load_vgg19(None)
    torch.testing.assert_close(vgg.features[0].weight, vgg_file[1][0].weight)


def test_missing_weights_say_which_file_where_and_from_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_vgg19(None)
    message = str(info.value)
    assert TORCHVISION_VGG19_FILE in message and TORCHVISION_VGG19_URL in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / TORCHVISION_VGG19_FILE) in message
    assert "Nothing is downloaded" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_vgg19(tmp_path / "nope.pth")
    assert issubclass(WeightsNotFoundError, FileNotFoundError)  # the CLI prints these as errors


def test_wrong_layout_is_explained(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"0.weight": torch.zeros(3, 3, 1, 1), "0.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="AdaIN's normalised VGG"):
        load_vgg19(path)
    features = torchvision_vgg19_features(3)
    bare = tmp_path / "bare.pth"
    torch.save(features.state_dict(), bare)  # a bare features Sequential: keys "0.weight" ...
    torch.testing.assert_close(load_vgg19(bare).features[34].bias, features[34].bias)


# -- losses ------------------------------------------------------------------------------------


def test_gram_matrix_normalisation():
    features = torch.randn(2, 4, 5, 3)
    flat = features.reshape(2, 4, 15)
    expected = flat @ flat.transpose(1, 2) / (4 * 5 * 3)
    torch.testing.assert_close(gram_matrix(features), expected)
    # Independent of the image size for a stationary texture: tiling the map keeps the Gram.
    tiled = features.repeat(1, 1, 2, 2)
    torch.testing.assert_close(gram_matrix(tiled), gram_matrix(features))


def test_content_and_style_losses():
    a, b = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(content_loss(a, b), ((a - b) ** 2).mean())
    torch.testing.assert_close(style_loss(a, gram_matrix(b)), ((gram_matrix(a) - gram_matrix(b)) ** 2).mean())
    assert style_loss(a, gram_matrix(a)).item() == 0
    # One style target for a batch of two.
    batch = torch.randn(2, 8, 6, 6)
    assert style_loss(batch, gram_matrix(b)).shape == ()


def test_mean_std_and_total_variation():
    x = torch.randn(2, 3, 7, 5)
    mean, std = channel_mean_std(x, eps=0)
    torch.testing.assert_close(mean[..., 0, 0], x.mean(dim=(2, 3)))
    torch.testing.assert_close(std[..., 0, 0], x.flatten(2).std(dim=2))
    y = torch.randn(2, 3, 9, 9) * 2 + 1
    my, sy = channel_mean_std(y)
    expected = F.mse_loss(channel_mean_std(x)[0], my) + F.mse_loss(channel_mean_std(x)[1], sy)
    torch.testing.assert_close(mean_std_style_loss(x, y), expected)
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4)  # horizontal steps of 1
    assert total_variation_loss(ramp).item() == 9.0  # 3 rows x 3 steps, squared
    assert total_variation_loss(ramp * 2, power=1).item() == 18.0
    assert total_variation_loss(torch.ones(1, 3, 4, 4)).item() == 0


def test_perceptual_loss(vgg_file):
    vgg = load_vgg19(vgg_file[0])
    loss = PerceptualLoss(vgg, layers=("relu1_1", "relu3_1"), weights=(1.0, 0.5))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y = torch.rand(1, 3, 32, 32)
    value = loss(x, y)
    fx, fy = vgg(x, ["relu1_1", "relu3_1"]), vgg(y, ["relu1_1", "relu3_1"])
    torch.testing.assert_close(value, F.mse_loss(fx["relu1_1"], fy["relu1_1"]) + 0.5 * F.mse_loss(fx["relu3_1"], fy["relu3_1"]))
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert loss(y, y).item() == 0
    # MUNIT's variant: instance-normalised feature maps, so only their spatial pattern counts.
    munit = PerceptualLoss(vgg, layers=("relu4_1",), normalize_features=True, criterion="l1")
    fx4, fy4 = vgg(x, ["relu4_1"])["relu4_1"], vgg(y, ["relu4_1"])["relu4_1"]
    torch.testing.assert_close(munit(x, y), F.l1_loss(F.instance_norm(fx4), F.instance_norm(fy4)))
    with pytest.raises(ValueError):
        PerceptualLoss(vgg, layers=("relu1_1",), weights=(1.0, 2.0))
