"""Tests of gan_style.data: decoding, transforms, the unpaired dataset and the demo set."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from gan_style.data import (
    DataConfig,
    DatasetError,
    ImageTransform,
    UnpairedImageDataset,
    demo,
    ensure_demo_dataset,
    find_images,
    item_seed,
    load_rgb,
    pil_to_tensor,
    tensor_to_pil,
)

VANGOGH = SHARED / "data" / "vangogh2photo"


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.uint8)


def _noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _make_domain(folder: Path, count: int, rng: np.random.Generator, size: tuple[int, int] = (40, 36)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        _noise_image(rng, *size).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """trainA with 5 images, trainB with 3, testA/testB with 2 each."""
    rng = np.random.default_rng(0)
    _make_domain(tmp_path / "trainA", 5, rng)
    _make_domain(tmp_path / "trainB", 3, rng)
    _make_domain(tmp_path / "testA", 2, rng)
    _make_domain(tmp_path / "testB", 2, rng)
    return tmp_path


def _small_config(root: Path, **overrides: object) -> DataConfig:
    settings: dict[str, object] = {"root": str(root), "load_size": 36, "crop_size": 32}
    settings.update(overrides)
    return DataConfig(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- image formats


def test_grey_image_is_replicated_to_rgb(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    loaded = load_rgb(tmp_path / "grey.png")
    assert loaded.mode == "RGB" and loaded.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(loaded), np.repeat(grey[:, :, None], 3, axis=2))


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128], [10, 200, 30, 255]]],
        dtype=np.uint8,
    )
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    loaded = np.asarray(load_rgb(tmp_path / "rgba.png")).astype(int)
    np.testing.assert_array_equal(loaded[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(loaded[0, 1], [0, 0, 255])  # opaque pixels keep their colour
    np.testing.assert_allclose(loaded[0, 2], [127, 127, 127], atol=1)  # half black on white
    np.testing.assert_array_equal(loaded[0, 3], [10, 200, 30])

    grey_alpha = Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), mode="LA")
    grey_alpha.save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "la.png"))[0], [[255] * 3, [50] * 3])


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette_image.putdata([0, 1, 2])
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "palette.png", transparency=0)
    palette_image.save(tmp_path / "palette.gif", transparency=0)
    for name in ("palette.png", "palette.gif"):
        loaded = np.asarray(load_rgb(tmp_path / name))
        np.testing.assert_array_equal(loaded[0], [[255, 255, 255], [255, 0, 0], [0, 255, 0]])


def _sixteen_bit_gradient() -> tuple[np.ndarray, np.ndarray]:
    # Exact 8->16-bit expansions (257 * k), values just below/above bin edges, and the extremes.
    values = np.concatenate(
        [np.arange(256) * 257, [1, 255, 256, 511, 512, 32767, 32768, 65279, 65280, 65534, 65535]]
    ).astype(np.uint16)
    values = np.resize(values, 16 * 17).reshape(16, 17)
    expected = (values >> 8).astype(np.uint8)
    return values, expected


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values, expected = _sixteen_bit_gradient()
    path = tmp_path / f"grey16.{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored with 16 bits
    loaded = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(loaded, np.repeat(expected[:, :, None], 3, axis=2))
    # The exact expansions come back to their 8-bit value.
    np.testing.assert_array_equal(loaded[0, :17, 0], np.arange(17))
    # PIL's own conversion clips instead, which is what load_rgb must avoid.
    assert np.asarray(Image.open(path).convert("RGB"))[0, 1, 0] == 255


def test_sixteen_bit_big_endian_and_32_bit_int(tmp_path: Path) -> None:
    values, expected = _sixteen_bit_gradient()
    big_endian = Image.frombytes("I;16B", (17, 16), values.astype(">u2").tobytes())
    big_endian.save(tmp_path / "grey16b.tif")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "grey16b.tif"))[:, :, 0], expected)

    int32 = np.array([[-5, 0, 257 * 100, 65535, 70000]], dtype=np.int32)
    Image.fromarray(int32).save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "int32.tif"))[0, :, 0], [0, 0, 100, 255, 255])


def test_float_and_bilevel_images(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], dtype=np.float32)).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "float.tif"))[0, :, 0], [0, 128, 255, 255, 0])
    Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert("1").save(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "bilevel.png"))[0, :, 2], [0, 255, 0])


def _png_rgb48(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _tiff_rgb48(values: np.ndarray) -> bytes:
    """An uncompressed 16-bit-per-channel RGB TIFF, little-endian (Pillow cannot write one)."""
    height, width, _ = values.shape
    pixels = values.astype("<u2").tobytes()
    entry_count = 10
    ifd_offset = 8 + len(pixels)
    bits_offset = ifd_offset + 2 + 12 * entry_count + 4

    def long_entry(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    def short_entry(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    entries = [
        long_entry(256, width),
        long_entry(257, height),
        struct.pack("<HHII", 258, 3, 3, bits_offset),  # BitsPerSample 16,16,16 stored after the IFD
        short_entry(259, 1),  # no compression
        short_entry(262, 2),  # RGB
        long_entry(273, 8),  # strip offset
        short_entry(277, 3),  # samples per pixel
        long_entry(278, height),
        long_entry(279, len(pixels)),
        short_entry(284, 1),  # chunky
    ]
    return (
        b"II*\x00" + struct.pack("<I", ifd_offset) + pixels + struct.pack("<H", entry_count)
        + b"".join(entries) + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16)
    )


@pytest.mark.parametrize("suffix, encode", [("png", _png_rgb48), ("tif", _tiff_rgb48)])
def test_48_bit_rgb_maps_like_16_bit_grey(tmp_path: Path, suffix: str, encode) -> None:
    values, expected = _sixteen_bit_gradient()
    colour = np.stack([values, values[::-1], np.full_like(values, 40000)], axis=2)
    path = tmp_path / f"rgb48.{suffix}"
    path.write_bytes(encode(colour))
    loaded = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(loaded[:, :, 0], expected)
    np.testing.assert_array_equal(loaded[:, :, 1], expected[::-1])
    assert (loaded[:, :, 2] == 40000 >> 8).all()


@pytest.mark.parametrize(
    "suffix, save_options, lossless",
    [
        ("bmp", {}, True),
        ("ppm", {}, True),
        ("webp", {"lossless": True}, True),
        ("tiff", {}, True),
        ("JPG", {"quality": 95}, False),  # upper-case suffix on purpose
    ],
)
def test_common_formats(tmp_path: Path, suffix: str, save_options: dict, lossless: bool) -> None:
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[:, :8] = (200, 40, 90)
    array[:, 8:] = (20, 180, 60)
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(array).save(path, format={"JPG": "JPEG"}.get(suffix), **save_options)
    assert find_images(tmp_path) == [path]
    loaded = np.asarray(load_rgb(path)).astype(int)
    if lossless:
        np.testing.assert_array_equal(loaded, array)
    else:
        assert np.median(np.abs(loaded - array)) <= 2  # JPEG: close, except at the colour edge


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red
    loaded = np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int)
    assert loaded.shape == (8, 8, 3)
    assert loaded[..., 0].mean() > 240 and loaded[..., 1].mean() < 15 and loaded[..., 2].mean() < 15


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image: left half red, right half blue
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = np.asarray(load_rgb(tmp_path / "rotated.jpg")).astype(int)
    assert loaded.shape == (40, 20, 3)  # now tall
    assert loaded[5, :, 0].mean() > 200 and loaded[-5, :, 2].mean() > 200  # red on top, blue below


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing"])
def test_unreadable_files_raise_dataset_error_naming_them(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buffer = io.BytesIO()
        _noise_image(np.random.default_rng(1), 64, 64).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "text":
        path.write_text("this is not an image")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        load_rgb(path)


# ---------------------------------------------------------------------------- tensors


def test_pil_to_tensor_matches_torchvision_to_tensor_and_normalize() -> None:
    from torchvision import transforms

    image = _noise_image(np.random.default_rng(2), 13, 7)
    reference = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(transforms.ToTensor()(image))
    ours = pil_to_tensor(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, 7, 13)
    assert torch.equal(ours, reference)
    # Hand computation: (x / 255 - 0.5) / 0.5 in float32.
    by_hand = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255) - 0.5) / 0.5
    assert torch.equal(ours, by_hand)
    assert pil_to_tensor(image.convert("L")).shape == (1, 7, 13)


def test_tensor_to_pil_truncates_like_reference_tensor2im() -> None:
    values = torch.tensor([-1.0, 1.0, 0.0, -0.999, 0.9999, 0.5, -0.5, 0.0039, 1.5, -3.0, 0.25, -0.25])
    tensor = values.reshape(1, 1, 12).repeat(3, 1, 1)
    tensor[1] *= 0.5
    out = np.asarray(tensor_to_pil(tensor))
    # Hand computation of the reference: (y + 1) / 2 * 255 in float32, truncated toward zero.
    array = tensor.numpy().astype(np.float32)
    expected = np.clip((np.transpose(array, (1, 2, 0)) + np.float32(1)) / np.float32(2) * np.float32(255), 0, 255)
    np.testing.assert_array_equal(out, np.trunc(expected).astype(np.uint8))
    assert out[0, 2, 0] == 127  # 127.5 truncates, it does not round to 128
    assert out[0, 1, 0] == 255 and out[0, 0, 0] == 0
    assert out[0, 8, 0] == 255 and out[0, 9, 0] == 0  # out of range values are clipped

    # Batch of one and one channel, as tensor2im accepts.
    grey = tensor_to_pil(values.reshape(1, 1, 1, 12))
    np.testing.assert_array_equal(np.asarray(grey)[:, :, 1], out[:, :, 0])
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))


def test_round_trip_matches_reference_numerics() -> None:
    # Reference behaviour: ToTensor+Normalize then tensor2im loses one step on some values.
    levels = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.repeat(levels.reshape(16, 16, 1), 3, axis=2))
    back = np.asarray(tensor_to_pil(pil_to_tensor(image)))[:, :, 0].reshape(-1).astype(int)
    normalized = ((levels.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    expected = ((normalized + np.float32(1)) / np.float32(2) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(back, expected)
    assert np.all(levels.astype(int) - back <= 1)


# ---------------------------------------------------------------------------- folders and config


def test_find_images_sorted_recursive_and_filtered(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.png", "a.PNG", "sub/c.jpg", ".hidden/d.png", "._e.png"):
        _noise_image(rng, 4, 4).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a.PNG", "b.png", "sub/c.jpg"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["a.PNG", "b.png"]
    assert [p.name for p in find_images(tmp_path, max_count=2)] == ["a.PNG", "b.png"]


def test_missing_and_empty_folders_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "trainA"
    with pytest.raises(DatasetError, match=re.escape(str(missing))) as error:
        find_images(missing)
    assert "trainB" in str(error.value)  # explains the expected layout

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=re.escape(str(empty))) as error:
        find_images(empty)
    assert ".png" in str(error.value) and ".jpg" in str(error.value)

    root = tmp_path / "half"
    _make_domain(root / "trainA", 1, np.random.default_rng(0))
    with pytest.raises(DatasetError, match=re.escape(str(root / "trainB"))):
        UnpairedImageDataset(_small_config(root))


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError) as error:
        DataConfig(load_size=200, crop_size=256)
    message = str(error.value)
    assert "256" in message and "200" in message and "data.load_size" in message
    with pytest.raises(ValueError, match="scale_width_and_crop"):
        DataConfig(preprocess="scale_width_and_crop", load_size=100, crop_size=128)
    with pytest.raises(ValueError, match="resize_and_crop, crop, scale_width"):
        DataConfig(preprocess="resize")
    with pytest.raises(ValueError, match="AtoB, BtoA"):
        DataConfig(direction="AB")
    with pytest.raises(ValueError, match="max_dataset_size"):
        DataConfig(max_dataset_size=0)
    # "crop" crops the raw image and "scale_width" does not crop: load_size < crop_size is fine.
    DataConfig(preprocess="crop", load_size=100, crop_size=128)
    DataConfig(preprocess="scale_width", load_size=100, crop_size=128)
    with pytest.raises(ValueError, match="crop_size"):
        ImageTransform("resize_and_crop", 100, 128, flip=False)


# ---------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "preprocess, load_size, crop_size, image_size, expected_shape",
    [
        ("resize_and_crop", 72, 64, (100, 50), (3, 64, 64)),
        ("crop", 999, 48, (100, 50), (3, 48, 48)),
        ("scale_width", 128, 64, (200, 100), (3, 64, 128)),
        ("scale_width", 128, 80, (200, 100), (3, 80, 128)),  # height kept >= crop_size
        ("scale_width", 60, 20, (60, 30), (3, 30, 60)),  # already the right width: untouched
        ("scale_width_and_crop", 128, 64, (200, 60), (3, 64, 64)),
        ("none", 0, 0, (202, 150), (3, 152, 200)),  # 50.5 -> 50 and 37.5 -> 38: halves to even
        ("none", 0, 0, (200, 152), (3, 152, 200)),
        ("none", 0, 0, (61, 66), (3, 64, 60)),
    ],
)
def test_transform_output_sizes(preprocess, load_size, crop_size, image_size, expected_shape) -> None:
    load_size, crop_size = (load_size, crop_size) if preprocess != "none" else (256, 256)
    transform = ImageTransform(preprocess, load_size, crop_size, flip=True)
    image = _noise_image(np.random.default_rng(4), *image_size)
    output = transform(image, torch.Generator().manual_seed(0))
    assert output.shape == expected_shape and output.dtype == torch.float32
    assert -1.0 <= output.min() and output.max() <= 1.0


def test_none_keeps_multiple_of_four_images_unchanged() -> None:
    image = _noise_image(np.random.default_rng(5), 200, 152)
    output = ImageTransform("none", 256, 256, flip=False)(image, torch.Generator())
    assert torch.equal(output, pil_to_tensor(image))


def test_crop_mode_rejects_small_image_naming_it() -> None:
    image = _noise_image(np.random.default_rng(6), 30, 40)
    with pytest.raises(DatasetError, match=r"photo_17\.jpg.*30x40"):
        ImageTransform("crop", 286, 32, flip=False)(image, torch.Generator(), name="photo_17.jpg")


def test_resize_matches_reference_torchvision_pipeline() -> None:
    from torchvision import transforms

    image = _noise_image(np.random.default_rng(7), 90, 70)
    reference = transforms.Compose(
        [
            transforms.Resize([64, 64], transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    ours = ImageTransform("resize_and_crop", 64, 64, flip=False)(image, torch.Generator())
    assert torch.equal(ours, reference(image))


def test_crop_and_flip_use_only_the_given_generator() -> None:
    image = _noise_image(np.random.default_rng(8), 50, 50)
    transform = ImageTransform("resize_and_crop", 50, 32, flip=True)
    global_state = torch.get_rng_state()
    first = transform(image, torch.Generator().manual_seed(123))
    torch.manual_seed(999)  # the global RNG must not matter
    second = transform(image, torch.Generator().manual_seed(123))
    assert torch.equal(first, second)
    torch.set_rng_state(global_state)

    outputs = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(40)]
    assert len({tuple(o.flatten()[:50].tolist()) for o in outputs}) > 20  # crops and flips vary
    # Some outputs are the mirror image of another crop: the flip is applied.
    full = ImageTransform("crop", 50, 50, flip=True)
    views = [full(image, torch.Generator().manual_seed(seed)) for seed in range(16)]
    plain = pil_to_tensor(image)
    assert any(torch.equal(v, plain) for v in views)
    assert any(torch.equal(v, plain.flip(-1)) for v in views)


def test_grayscale_gives_one_channel() -> None:
    image = _noise_image(np.random.default_rng(9), 40, 40)
    output = ImageTransform("resize_and_crop", 40, 32, flip=False, grayscale=True)(image, torch.Generator())
    assert output.shape == (1, 32, 32)


# ---------------------------------------------------------------------------- dataset


def _items_equal(first: dict, second: dict) -> bool:
    return (
        torch.equal(first["A"], second["A"])
        and torch.equal(first["B"], second["B"])
        and first["A_path"] == second["A_path"]
        and first["B_path"] == second["B_path"]
    )


def test_dataset_length_keys_and_serial_batches(tiny_root: Path) -> None:
    dataset = UnpairedImageDataset(_small_config(tiny_root, serial_batches=True))
    assert (dataset.len_A, dataset.len_B, len(dataset)) == (5, 3, 5)
    item = dataset[4]
    assert set(item) == {"A", "B", "A_path", "B_path"}
    assert item["A"].shape == (3, 32, 32) and item["B"].shape == (3, 32, 32)
    assert Path(item["A_path"]).name == "004.png" and Path(item["B_path"]).name == "001.png"
    assert Path(item["A_path"]).parent.name == "trainA"
    with pytest.raises(IndexError):
        dataset[5]

    random_b = UnpairedImageDataset(_small_config(tiny_root))
    chosen = set()
    for epoch in range(4):
        random_b.set_epoch(epoch)
        chosen.update(Path(random_b[i]["B_path"]).name for i in range(len(random_b)))
    assert len(chosen) > 1


def test_dataset_is_deterministic_per_seed_epoch_index(tiny_root: Path) -> None:
    config = _small_config(tiny_root, load_size=40)
    dataset = UnpairedImageDataset(config, seed=7)
    again = UnpairedImageDataset(config, seed=7)
    other_seed = UnpairedImageDataset(config, seed=8)
    for index in range(len(dataset)):
        assert _items_equal(dataset[index], dataset[index])
        assert _items_equal(dataset[index], again[index])
    assert not all(_items_equal(dataset[i], other_seed[i]) for i in range(len(dataset)))

    epoch0 = [dataset[i] for i in range(len(dataset))]
    dataset.set_epoch(1)
    epoch1 = [dataset[i] for i in range(len(dataset))]
    # Different epoch -> different crops of the same A image.
    assert all(a["A_path"] == b["A_path"] for a, b in zip(epoch0, epoch1))
    assert sum(not torch.equal(a["A"], b["A"]) for a, b in zip(epoch0, epoch1)) >= 4
    # (epoch, index) pairs override the stored epoch, for persistent workers.
    assert _items_equal(dataset[(0, 2)], epoch0[2])
    dataset.set_epoch(0)
    assert _items_equal(dataset[3], epoch0[3])
    assert item_seed(7, 0, 3) == item_seed(7, 0, 3) != item_seed(7, 1, 3)


def test_dataset_is_independent_of_worker_count(tiny_root: Path) -> None:
    dataset = UnpairedImageDataset(_small_config(tiny_root, load_size=40), seed=3)
    dataset.set_epoch(2)

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, shuffle=False)
        return list(loader)

    single, parallel = batches(0), batches(2)
    assert len(single) == len(parallel) == 3
    for first, second in zip(single, parallel):
        assert torch.equal(first["A"], second["A"]) and torch.equal(first["B"], second["B"])
        assert first["B_path"] == second["B_path"]


def test_direction_b_to_a_swaps_domains(tiny_root: Path) -> None:
    dataset = UnpairedImageDataset(_small_config(tiny_root, direction="BtoA", serial_batches=True))
    assert (dataset.len_A, dataset.len_B) == (3, 5)
    item = dataset[0]
    assert Path(item["A_path"]).parent.name == "trainB" and Path(item["B_path"]).parent.name == "trainA"

    grey_source = UnpairedImageDataset(_small_config(tiny_root, direction="BtoA", grayscale_A=True))
    assert grey_source[0]["A"].shape[0] == 1 and grey_source[0]["B"].shape[0] == 3


def test_max_dataset_size_and_test_phase(tiny_root: Path) -> None:
    dataset = UnpairedImageDataset(_small_config(tiny_root, max_dataset_size=2))
    assert (dataset.len_A, dataset.len_B, len(dataset)) == (2, 2, 2)
    assert [p.name for p in dataset.paths_A] == ["000.png", "001.png"]
    test = UnpairedImageDataset(_small_config(tiny_root, phase="test"))
    assert len(test) == 2 and test.dir_A == tiny_root / "testA"


def test_corrupt_file_is_skipped_with_one_warning(tiny_root: Path) -> None:
    bad = tiny_root / "trainA" / "002.png"
    bad.write_bytes(b"")  # zero bytes
    dataset = UnpairedImageDataset(_small_config(tiny_root, serial_batches=True, no_flip=True))
    with pytest.warns(UserWarning) as caught:
        items = [dataset[i] for i in range(len(dataset))]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and str(bad) in messages[0] and "Skipping" in messages[0]
    # The bad file's slot is served by the next file of the domain, deterministically.
    assert Path(items[2]["A_path"]).name == "003.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass must not warn again
        again = dataset[2]
    assert Path(again["A_path"]).name == "003.png"


def test_last_file_corrupt_wraps_around_and_all_corrupt_raises(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    _make_domain(tmp_path / "trainA", 3, rng)
    _make_domain(tmp_path / "trainB", 2, rng)
    (tmp_path / "trainA" / "002.png").write_text("garbage")
    dataset = UnpairedImageDataset(_small_config(tmp_path, serial_batches=True))
    with pytest.warns(UserWarning, match="002.png"):
        assert Path(dataset[2]["A_path"]).name == "000.png"

    for path in (tmp_path / "trainB").iterdir():
        path.write_bytes(b"\x89PNG broken")
    broken = UnpairedImageDataset(_small_config(tmp_path, serial_batches=True))
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=re.escape(str(tmp_path / "trainB"))):
        broken[0]


# ---------------------------------------------------------------------------- demo dataset


def test_demo_dataset_builds_once_with_expected_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAN_STYLE_CACHE", str(tmp_path / "cache"))
    root = ensure_demo_dataset()
    assert root == tmp_path / "cache" / "demo_v1"
    for split, count in {"trainA": 200, "trainB": 200, "testA": 20, "testB": 20}.items():
        files = find_images(root / split)
        assert len(files) == count, split
    with Image.open(files[0]) as first:
        assert first.size == (64, 64) and first.mode == "RGB"
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no staging left over

    stamp = (root / "trainA" / "0000.png").stat().st_mtime_ns
    assert ensure_demo_dataset() == root
    assert (root / "trainA" / "0000.png").stat().st_mtime_ns == stamp  # reused, not rewritten

    dataset = UnpairedImageDataset(DataConfig(root="demo", **demo.DEMO_DATA_SETTINGS))
    assert dataset.root == root and len(dataset) == 200
    assert dataset[0]["A"].shape == (3, 64, 64)

    # The two domains differ in style: paintings are more saturated and have more texture.
    def saturation_and_texture(split: str) -> tuple[float, float]:
        images = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in find_images(root / split)[:50]])
        saturation = (images.max(axis=3) - images.min(axis=3)).mean()
        texture = np.abs(np.diff(images, axis=2)).mean()
        return saturation, texture

    photo, painting = saturation_and_texture("trainA"), saturation_and_texture("trainB")
    assert painting[0] > photo[0] * 1.3 and painting[1] > photo[1] * 1.5


def test_demo_rendering_is_deterministic_and_unpaired() -> None:
    first = demo.render_demo_image(np.random.default_rng([1, 2]), painted=True)
    second = demo.render_demo_image(np.random.default_rng([1, 2]), painted=True)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)


def test_demo_dataset_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError, match=re.escape(str(foreign))):
        ensure_demo_dataset(foreign)
    assert (foreign / "keep.txt").exists()


# ---------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not VANGOGH.is_dir(),
    reason=f"{VANGOGH} is absent: this test needs the shared data folder (../shared beside the repo, or GAN_STYLE_SHARED)",
)
def test_real_vangogh2photo_items() -> None:
    dataset = UnpairedImageDataset(DataConfig(root=str(VANGOGH)), seed=0)
    assert dataset.len_A > 100 and dataset.len_B > 100 and len(dataset) == max(dataset.len_A, dataset.len_B)
    for index in (0, 1, len(dataset) - 1):
        item = dataset[index]
        for key in ("A", "B"):
            assert item[key].shape == (3, 256, 256)
            assert -1.0 <= item[key].min() < 0 < item[key].max() <= 1.0
    # "crop" with crop_size 256 on the 256x256 originals and no flip is the image itself.
    exact_config = DataConfig(
        root=str(VANGOGH), phase="test", preprocess="crop", crop_size=256, no_flip=True, serial_batches=True
    )
    item = UnpairedImageDataset(exact_config)[0]
    original = load_rgb(item["A_path"])
    assert torch.equal(item["A"], pil_to_tensor(original))
    # Saving the tensor back loses at most one level (the reference's truncation).
    difference = np.asarray(original).astype(int) - np.asarray(tensor_to_pil(item["A"])).astype(int)
    assert difference.min() >= 0 and difference.max() <= 1
