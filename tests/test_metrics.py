"""Metrics with known answers: FID, KID, SWD, SSIM, content/style losses, LPIPS diversity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_style.errors import UserError
from gan_style.evaluation import METRICS, evaluate_images
from gan_style.evaluation import metrics as M


def smooth_noise(count: int, size: int = 32, sigma: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Gaussian noise blurred with a Gaussian of ``sigma`` px, as (count, 3, size, size) in [-1, 1]:
    the larger sigma, the coarser the texture."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 3, size, size, generator=generator)
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-x**2 / (2 * sigma**2))
    taps = taps / taps.sum()
    noise = nn.functional.pad(noise, (radius,) * 4, mode="circular")
    noise = nn.functional.conv2d(noise, taps.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    noise = nn.functional.conv2d(noise, taps.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return (noise / noise.std() * 0.4).clamp(-1, 1)


class TinyFeatures(nn.Module):
    """A small fixed feature network (uint8 images -> 8 features), standing in for Inception."""

    identity = "tiny-features-v1"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=2)
        self.calls = 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))


# -- FID and KID ---------------------------------------------------------------------------------


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    features = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    assert M.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    # Equal covariances: FID = |mu_r - mu_f|^2 exactly (Heusel et al., Eq. 6).
    assert M.frechet_distance(features, features + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    # Scaling the spread by s: Tr(S + s^2 S - 2 s S) = (1 - s)^2 Tr(S).
    centred = features - features.mean(0)
    trace = float(torch.cov(centred.T).trace())
    assert M.frechet_distance(centred, 2 * centred) == pytest.approx(trace, rel=1e-6)


def test_fid_and_kid_are_zero_for_a_set_against_itself_and_grow_with_a_shift(tmp_path):
    net = TinyFeatures()
    base = smooth_noise(40, sigma=1.5)
    results = [evaluate_images((base + delta).clamp(-1, 1), base, metrics=("fid", "kid"), feature_network=net, cache_dir=tmp_path)
               for delta in (0.0, 0.15, 0.3, 0.6)]
    assert results[0]["fid"] == pytest.approx(0.0, abs=1e-6)
    # The unbiased MMD^2 of a set with itself is slightly negative (the k(x, x) terms are left
    # out of the within-set means only): ~0 next to a shifted set's.
    assert abs(results[0]["kid"]) < 0.02 * results[-1]["kid"]
    fids = [r["fid"] for r in results]
    kids = [r["kid"] for r in results]
    assert fids == sorted(fids) and fids[1] > 1e-4, fids
    assert kids == sorted(kids) and kids[-1] > 10 * results[-1]["kid_std"], kids


def test_real_features_are_cached_by_content(tmp_path):
    net = TinyFeatures()
    real, fake = smooth_noise(6, seed=1), smooth_noise(6, seed=2)
    first = evaluate_images(fake, real, metrics=("fid",), feature_network=net, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    calls = net.calls
    again = evaluate_images(fake, real, metrics=("fid",), feature_network=net, cache_dir=tmp_path)
    assert again == first
    assert net.calls == calls + 1  # only the fakes were run through the network again
    evaluate_images(fake, real.flip(3), metrics=("fid",), feature_network=net, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # other pixels, another entry


def test_small_sets_warn_that_fid_misleads(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="gan_style"):
        evaluate_images(smooth_noise(5), smooth_noise(5, seed=3), metrics=("fid",), feature_network=TinyFeatures(), cache_dir=tmp_path)
    assert "strongly biased" in caplog.text and "5 fake and 5 real" in caplog.text


def random_fidelity_inception():
    """torch-fidelity's Inception-v3 with random weights: built without its weight file (whose
    download and loading are stubbed out for the construction only)."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    patch = pytest.MonkeyPatch()
    patch.setattr(module, "load_state_dict_from_url", lambda *args, **kwargs: {})
    patch.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
    try:
        torch.manual_seed(0)
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        patch.undo()
    for m in network.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return network.eval()


@pytest.fixture(scope="module")
def inception_home(tmp_path_factory):
    """A torch hub cache holding a random Inception in torch-fidelity's file and layout."""
    from gan_style.evaluation.inception import INCEPTION_FILE

    home = tmp_path_factory.mktemp("torch_home")
    network = random_fidelity_inception()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(network.state_dict(), home / "hub" / "checkpoints" / INCEPTION_FILE)
    return home, network


def test_inception_loads_from_the_hub_cache_through_our_loader(inception_home, monkeypatch, tmp_path):
    from gan_style.evaluation.inception import load_inception

    home, reference = inception_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    loaded = load_inception()
    images = (smooth_noise(2, size=64) * 127.5 + 127.5).round().to(torch.uint8)
    with torch.no_grad():
        want = reference(images)[0].reshape(2, -1)
    got = loaded(images)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # The whole path of evaluate_images (the cached real set included) on these weights.
    as_float = images.float() / 127.5 - 1
    result = evaluate_images(as_float, as_float.flip(0), metrics=("kid",), cache_dir=tmp_path, image_size=64)
    assert abs(result["kid"]) < 1e-3 and list(tmp_path.glob("features-*.pt"))


def test_missing_inception_weights_say_which_file_where_and_from_where(tmp_path, monkeypatch):
    from gan_style.evaluation.inception import INCEPTION_FILE, INCEPTION_URL

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError) as error:
        evaluate_images(smooth_noise(3), smooth_noise(3), metrics=("fid",), cache_dir=tmp_path)
    message = str(error.value)
    assert INCEPTION_FILE in message and str(tmp_path / "empty" / "hub" / "checkpoints") in message
    assert INCEPTION_URL in message and "--inception-weights" in message and "\n" not in message


def test_wrong_inception_file_is_explained(tmp_path):
    from gan_style.evaluation.inception import load_inception

    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not torch-fidelity's Inception-v3"):
        load_inception(path)


# -- SWD -----------------------------------------------------------------------------------------


def test_sliced_wasserstein_known_answers():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 4, generator=generator, dtype=torch.float64)
    assert M.sliced_wasserstein(points, points) == 0.0
    # A shift t e_1: every projection moves by t |theta_1|, and E|theta_1| over the unit sphere
    # of R^d is Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    t, d = 3.0, 4
    shifted = points.clone()
    shifted[:, 0] += t
    expected = t * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert M.sliced_wasserstein(points, shifted, directions=4096) == pytest.approx(expected, rel=0.03)
    # Unequal sizes: a subset of the same distribution is close; the quantile rule handles n != m.
    assert M.sliced_wasserstein(points, points[::3]) < 0.1 * expected


def test_laplacian_pyramid_levels_and_reconstruction():
    images = smooth_noise(2, size=64)
    levels = M.laplacian_pyramid(images)
    assert [level.shape[-1] for level in levels] == [64, 32, 16]
    # Collapsing the pyramid gives the image back (Burt and Adelson).
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = level + M._up(rebuilt, level.shape[-2:])
    torch.testing.assert_close(rebuilt, images, atol=1e-5, rtol=0)


def test_swd_orders_synthetic_sets_by_their_texture():
    real = smooth_noise(16, size=64, sigma=1.0, seed=0)
    same = smooth_noise(16, size=64, sigma=1.0, seed=1)
    coarser = smooth_noise(16, size=64, sigma=2.0, seed=2)
    much_coarser = smooth_noise(16, size=64, sigma=4.0, seed=3)
    swd = [evaluate_images(fake, real, metrics=("swd",))["swd"] for fake in (same, coarser, much_coarser)]
    assert swd[0] < swd[1] < swd[2], swd
    assert swd[2] > 2 * swd[0]
    # deterministic for a seed
    assert evaluate_images(same, real, metrics=("swd",))["swd"] == swd[0]


# -- SSIM ----------------------------------------------------------------------------------------


def test_luminance_ssim_is_one_for_the_source_and_falls_with_noise():
    photos = smooth_noise(4, sigma=1.0)
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(5))
    values = [evaluate_images((photos + level * noise).clamp(-1, 1), None, photos, metrics=("ssim",))["ssim"] for level in (0.0, 0.1, 0.4)]
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert values[0] > values[1] > values[2]
    # Luminance only: a tint at constant BT.601 luma (0.299 a + 0.587 b + 0.114 c = 1) keeps SSIM at 1.
    grey = (photos[:, :1] + 1) / 2 * 0.6
    a, c = 1.5, 1.0
    tint = torch.tensor([a, (1 - 0.299 * a - 0.114 * c) / 0.587, c]).view(1, 3, 1, 1)
    torch.testing.assert_close(M.luminance_ssim(grey * tint, grey.expand(-1, 3, -1, -1)), torch.ones(4), atol=1e-5, rtol=0)
    assert float(M.luminance_ssim(grey * tint, grey.flip(3).expand(-1, 3, -1, -1)).mean()) < 0.9


def test_ssim_needs_the_sources():
    with pytest.raises(UserError, match="--input"):
        evaluate_images(smooth_noise(2), None, None, metrics=("ssim",))
    with pytest.raises(UserError, match="one source per output"):
        evaluate_images(smooth_noise(3), None, smooth_noise(2), metrics=("ssim",))


def test_unknown_metric_and_speed_are_refused():
    with pytest.raises(UserError, match="choose from"):
        evaluate_images(smooth_noise(2), smooth_noise(2), metrics=("sharpness",))
    with pytest.raises(UserError, match="measure_speed"):
        evaluate_images(smooth_noise(2), smooth_noise(2), metrics=("speed",))
    assert set(METRICS) == {"fid", "kid", "swd", "ssim", "content", "style", "lpips_diversity", "speed"}


# -- content / style (VGG-19) and LPIPS (VGG-16) ----------------------------------------------------


def _write_vgg(path, blocks_cfg: str, seed: int) -> None:
    import torchvision

    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[blocks_cfg])
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg")
    _write_vgg(folder / "vgg19.pth", "E", 0)
    _write_vgg(folder / "vgg16.pth", "D", 1)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=torch.Generator().manual_seed(i))
           for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, folder / "lin.pth")
    return folder


def test_content_and_style_losses(vgg_files):
    photos, painting = smooth_noise(3, sigma=1.0), smooth_noise(1, sigma=3.0, seed=9)
    kept = evaluate_images(photos, None, photos, metrics=("content", "style"), vgg_weights=vgg_files / "vgg19.pth", style_image=list(painting))
    assert kept["content_loss"] == pytest.approx(0.0, abs=1e-8) and kept["style_loss"] > 0
    styled = evaluate_images(painting.expand(3, -1, -1, -1), None, photos, metrics=("content", "style"),
                             vgg_weights=vgg_files / "vgg19.pth", style_image=list(painting))
    assert styled["style_loss"] == pytest.approx(0.0, abs=1e-10) and styled["content_loss"] > 0
    # Without a style image the target is the real set's mean Gram matrices.
    assert evaluate_images(photos, photos, metrics=("style",), vgg_weights=vgg_files / "vgg19.pth")["style_loss"] < kept["style_loss"]


def test_missing_vgg_weights_name_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="--vgg-weights") as error:
        evaluate_images(smooth_noise(2), None, smooth_noise(2), metrics=("content",))
    assert "vgg19-dcbb9e9d.pth" in str(error.value)
    with pytest.raises(UserError, match="--lpips-vgg16-weights"):
        evaluate_images(smooth_noise(2), None, metrics=("lpips_diversity",), diverse_outputs=[list(smooth_noise(2))])


def test_lpips_diversity_is_zero_for_identical_outputs(vgg_files):
    from gan_style.evaluation.lpips import load_lpips

    kwargs = {"lpips_weights": vgg_files / "lin.pth", "lpips_vgg16_weights": vgg_files / "vgg16.pth"}
    same = smooth_noise(1, seed=4)[0]
    assert evaluate_images([same], None, metrics=("lpips_diversity",), diverse_outputs=[[same] * 3] * 2, **kwargs)["lpips_diversity"] == 0.0
    varied = list(smooth_noise(3, seed=5))
    diversity = evaluate_images([same], None, metrics=("lpips_diversity",), diverse_outputs=[varied], image_size=32, **kwargs)["lpips_diversity"]
    assert diversity > 0
    # It is the mean of the three pairwise distances, and LPIPS is symmetric.
    lpips = load_lpips(vgg_files / "lin.pth", vgg_files / "vgg16.pth")
    x = ((torch.stack(varied) + 1) * 127.5).round() / 127.5 - 1  # the uint8 images evaluate_images sees
    pairs = lpips(x[[0, 0, 1]], x[[1, 2, 2]])
    torch.testing.assert_close(lpips(x[[1, 2, 2]], x[[0, 0, 1]]), pairs)
    assert diversity == pytest.approx(float(pairs.mean()), rel=1e-5)


def test_lpips_matches_its_definition_on_one_layer(vgg_files):
    from gan_style.evaluation.lpips import LPIPS, load_lpips

    full = load_lpips(vgg_files / "lin.pth", vgg_files / "vgg16.pth")
    only_first = LPIPS(full.vgg, [full.w0] + [torch.zeros_like(getattr(full, f"w{i}")) for i in range(1, 5)])
    x, y = smooth_noise(1, seed=6), smooth_noise(1, seed=7)
    fx, fy = full.vgg(x, ["relu1_2"])["relu1_2"], full.vgg(y, ["relu1_2"])["relu1_2"]
    nx, ny = fx / fx.norm(dim=1, keepdim=True), fy / fy.norm(dim=1, keepdim=True)
    expected = (full.w0 * (nx - ny) ** 2).sum(dim=1).mean()  # Zhang et al., Eq. 1, one layer
    assert float(only_first(x, y)) == pytest.approx(float(expected), rel=1e-4)
