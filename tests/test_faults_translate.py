"""gan-style translate under bad inputs and options: no data lost, bad images skipped and named,
options checked before the model loads, out-of-memory and huge images handled, and the data
side of it (reduced decoding of huge training images, symlink loops)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import gan_style.translate as translate_module
from gan_style.cli import main as cli_main
from gan_style.data import ImageTransform, find_images, load_rgb
from gan_style.data.images import pixel_limit
from gan_style.errors import UserError
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.translate import ImageTranslator, translate_images


def write_image(path, width, height, seed=0, **save_options):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, **save_options)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny CycleGAN-style generator state_dict, read by the official-checkpoint importer."""
    torch.manual_seed(0)
    path = tmp_path / "G.pth"
    torch.save(build_generator(GeneratorSpec("resnet_6blocks", ngf=4)).state_dict(), path)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(translate_module, "load_translator", refuse)


def translate(checkpoint, source, output, *extra):
    return cli_main(["translate", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output), "--quiet", *extra])


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------- no data lost


def test_output_equal_to_the_input_folder_is_refused_and_originals_intact(tmp_path, checkpoint, no_model, capsys):
    images = tmp_path / "images"
    images.mkdir()
    originals = {path: path.read_bytes() for path in (write_image(images / "a.png", 20, 16), write_image(images / "b.jpg", 20, 16, 1))}
    assert translate(checkpoint, images, images) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--output" in line and f"choose an --output outside {images}" in line
    # A single file's own folder is refused too.
    assert translate(checkpoint, images / "a.png", images) == 2
    assert "--output" in one_error_line(capsys.readouterr().err)
    assert {path: path.read_bytes() for path in originals} == originals
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "b.jpg"]


def test_output_inside_the_input_folder_is_refused(tmp_path, checkpoint, no_model, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", 20, 16)
    assert translate(checkpoint, images, images / "translated") == 2
    assert f"choose an --output outside {images}" in one_error_line(capsys.readouterr().err)
    assert not (images / "translated").exists()


def test_an_output_that_would_be_an_input_is_refused(tmp_path, checkpoint, no_model, capsys):
    # --input out/p --output out: p/p/x.png would be written over the input p/x.png.
    source = tmp_path / "out" / "p"
    (source / "p").mkdir(parents=True)
    first = write_image(source / "x.png", 20, 16).read_bytes()
    write_image(source / "p" / "x.png", 24, 16, seed=1)
    assert translate(checkpoint, source, tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "would overwrite the input image" in line and str(source / "x.png") in line
    assert (source / "x.png").read_bytes() == first


def test_inputs_with_the_same_stem_are_all_kept(tmp_path, checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", 36, 28)
    write_image(images / "a.jpg", 40, 32, seed=1)
    out = tmp_path / "out"
    assert translate(checkpoint, images, out) == 0
    captured = capsys.readouterr()
    # The .png input keeps a.png; the other is named after its full file name.
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png"]
    assert Image.open(out / "a.png").size == (36, 28)
    assert Image.open(out / "a.jpg.png").size == (40, 32)
    assert "a.jpg -> a.jpg.png" in captured.err and "wrote 2 image(s)" in captured.out


# ------------------------------------------------------------------------- bad images


@pytest.fixture
def mixed_folder(tmp_path):
    """Two good images, two unreadable files, and three images smaller than the network's
    bottleneck (it needs 8 px sides): 1x1, 3x3 and 2000x2."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_image(folder / "good1.png", 40, 30)
    write_image(folder / "good2.jpg", 33, 47, seed=1)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    (folder / "empty.png").write_bytes(b"")
    for name, (width, height) in {"one.png": (1, 1), "three.png": (3, 3), "strip.png": (2000, 2)}.items():
        write_image(folder / name, width, height, seed=width)
    return folder


def test_a_folder_run_writes_every_good_image_and_names_each_skip(tmp_path, checkpoint, mixed_folder, capsys):
    out = tmp_path / "out"
    assert translate(checkpoint, mixed_folder, out) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    # Tiny images are translated too (replicate-padded up to the network's minimum), at their size.
    assert sizes == {"good1.png": (40, 30), "good2.png": (33, 47), "one.png": (1, 1), "three.png": (3, 3), "strip.png": (2000, 2)}
    skips = [line for line in captured.err.splitlines() if line.startswith("warning: skipped")]
    assert len(skips) == 2
    assert any(str(mixed_folder / "corrupt.jpg") in line for line in skips)
    assert any(str(mixed_folder / "empty.png") in line for line in skips)
    assert "wrote 5, skipped 2 (see above)" in captured.out


def test_strict_stops_at_the_first_bad_image(tmp_path, checkpoint, mixed_folder, capsys):
    assert translate(checkpoint, mixed_folder, tmp_path / "out", "--strict") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(mixed_folder / "corrupt.jpg") in line  # the first bad file in path order


def test_tiny_images_translate_in_tiles_and_resize_mode(tmp_path, checkpoint, mixed_folder):
    for name in ("corrupt.jpg", "empty.png"):
        (mixed_folder / name).unlink()
    assert translate(checkpoint, mixed_folder, tmp_path / "tiled", "--tile", "4", "--tile-overlap", "0") == 0
    assert Image.open(tmp_path / "tiled" / "strip.png").size == (2000, 2)
    assert translate(checkpoint, mixed_folder, tmp_path / "resized", "--fit", "resize") == 0
    assert Image.open(tmp_path / "resized" / "strip.png").size == (2000, 4)


# ------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tile", "-8"], "--tile"),
        (["--tile", "0"], "--tile"),
        (["--batch-size", "0"], "--batch-size"),
        (["--tile-overlap", "-1"], "--tile-overlap"),
        (["--max-pixels", "-5"], "--max-pixels"),
        (["--device", "gpu"], "--device"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(tmp_path, checkpoint, no_model, capsys, flags, named):
    image = write_image(tmp_path / "a.png", 20, 16)
    assert translate(checkpoint, image, tmp_path / "out", *flags) == 2
    assert named in one_error_line(capsys.readouterr().err)


def test_tile_below_the_size_multiple_is_refused(tmp_path, checkpoint, capsys):
    image = write_image(tmp_path / "a.png", 20, 16)
    assert translate(checkpoint, image, tmp_path / "out", "--tile", "2") == 2
    assert "--tile 2 is smaller than this network's size multiple 4" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(tmp_path, checkpoint, no_model, capsys, device):
    image = write_image(tmp_path / "a.png", 20, 16)
    assert translate(checkpoint, image, tmp_path / "out", "--device", device) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no CUDA device is available" in line and "--device cpu" in line


# ------------------------------------------------------------------------- out of memory


class OutOfMemoryNetwork(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate {x.numel() * 400} bytes.")


def test_out_of_memory_names_the_image_and_suggests_tiles(tmp_path):
    image = write_image(tmp_path / "big.png", 64, 48)
    translator = ImageTranslator(OutOfMemoryNetwork(), 4, "test")
    with pytest.raises(UserError, match=r"big\.png \(64x48 pixels\).*--tile 512"):
        translate_images(translator, [image], tmp_path / "out", progress=False, strict=True)
    # Without strict the image is skipped (and reported), not raised.
    messages = []
    assert translate_images(translator, [image], tmp_path / "out", progress=False, report=messages.append) == []
    assert len(messages) == 1 and "--tile 512" in messages[0]


def test_out_of_memory_in_a_folder_run_skips_the_image(tmp_path, checkpoint, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", 64, 48)
    write_image(images / "b.png", 32, 32, seed=1)
    monkeypatch.setattr(translate_module, "load_translator", lambda *args: ImageTranslator(OutOfMemoryNetwork(), 4, "oom"))
    assert translate(checkpoint, images, tmp_path / "out", "--batch-size", "2") == 1
    captured = capsys.readouterr()
    skips = [line for line in captured.err.splitlines() if line.startswith("warning: skipped")]
    assert len(skips) == 2 and "(64x48 pixels)" in skips[0] and "--tile 512" in skips[0]
    assert "wrote 0, skipped 2 (see above)" in captured.out and "Traceback" not in captured.err


# ------------------------------------------------------------------------- huge images


def test_decompression_bomb_refusal_names_the_flags_and_both_lift_it(tmp_path, checkpoint, monkeypatch, capsys):
    # PIL refuses above twice MAX_IMAGE_PIXELS: 2000 pixels here, and the image has 3000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    image = write_image(tmp_path / "huge.png", 60, 50)
    assert translate(checkpoint, image, tmp_path / "refused") == 1
    captured = capsys.readouterr()
    skip = next(line for line in captured.err.splitlines() if line.startswith("warning: skipped"))
    assert "huge.png is 60x50" in skip and "--tile" in skip and "--max-pixels" in skip
    assert translate(checkpoint, image, tmp_path / "refused", "--strict") == 2
    assert "--max-pixels" in one_error_line(capsys.readouterr().err)
    assert translate(checkpoint, image, tmp_path / "small-limit", "--max-pixels", "2999") == 1
    capsys.readouterr()

    assert translate(checkpoint, image, tmp_path / "tiled", "--tile", "32", "--tile-overlap", "8") == 0
    for limit in ("3000", "0"):
        assert translate(checkpoint, image, tmp_path / f"limit{limit}", "--max-pixels", limit) == 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is scoped to the run
    with pixel_limit(None):
        assert [Image.open(tmp_path / name / "huge.png").size for name in ("tiled", "limit3000", "limit0")] == [(60, 50)] * 3


def test_huge_jpeg_is_decoded_at_a_reduced_scale_but_never_below_the_target(tmp_path):
    path = write_image(tmp_path / "photo.jpg", 4000, 3000, quality=80)
    transform = ImageTransform("resize_and_crop", load_size=286, crop_size=256, flip=False)
    assert transform.decode_min_size == (286, 286)
    image = load_rgb(path, transform.decode_min_size)
    # 1/4 scale: 12 megapixels never decoded whole (36 MB), 1000x750 (2.25 MB) instead, still
    # twice the target so the bicubic resize that follows filters properly.
    assert image.size == (1000, 750) and image.mode == "RGB"
    assert transform(image, torch.Generator().manual_seed(0)).shape == (3, 256, 256)


def test_other_formats_are_box_reduced_and_small_images_unchanged(tmp_path):
    png = write_image(tmp_path / "big.png", 2000, 1500)
    assert load_rgb(png, (286, 286)).size == (1000, 750)
    # Up to four times the target (so anything up to 2x) the result is exactly as before.
    for path in (write_image(tmp_path / "small.jpg", 1100, 600, seed=1), write_image(tmp_path / "small.png", 572, 700, seed=2)):
        assert np.array_equal(np.asarray(load_rgb(path, (286, 286))), np.asarray(load_rgb(path)))


# ------------------------------------------------------------------------- symlink loops


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")
def test_a_symlink_loop_lists_each_image_once(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for index in range(5):
        write_image(folder / f"{index}.png", 8, 8, seed=index)
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "sub" / "again.png").symlink_to(folder / "0.png")  # a second name for one file
    with pytest.warns(UserWarning, match="loop") as caught:
        found = find_images(folder)
    assert found == [folder / f"{index}.png" for index in range(5)]
    assert len(caught) == 1 and str(folder / "sub" / "loop") in str(caught[0].message)
