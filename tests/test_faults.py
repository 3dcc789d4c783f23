"""Nothing lost, nothing cryptic: checkpoints under crashes and damage, and the command line under
bad options and bad files (issue 7). Translate's own faults are in test_faults_translate.py."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from gan_style.cli import main as cli_main
from gan_style.engine import checkpoint as checkpoint_module
from gan_style.engine.checkpoint import load_checkpoint, load_run_checkpoint, snapshots
from gan_style.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "ngf=4", "--set", "ndf=4", "--set", "netG=resnet_6blocks", "--set", "pool_size=2",
        "--set", "data.load_size=36", "--set", "data.crop_size=32", "--set", "data.max_dataset_size=4"]


def train(run: Path, *extra: str) -> int:
    return cli_main(["train", "--run-dir", str(run), *TINY, *extra])


def assert_one_error_line(capsys, status: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


class PickledCode:
    """An object whose unpickling would run a shell command (it never must)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.fixture
def trained_run(tmp_path, demo_cache):
    run = tmp_path / "run"
    assert train(run, "--set", "train.max_steps=4", "--set", "train.save_every=2", "--set", "train.keep_checkpoints=3") == 0
    return run


def test_a_save_writes_the_checkpoint_once(trained_run):
    ckpt = trained_run / "checkpoints"
    assert [p.name for p in snapshots(ckpt)] == ["step_00000002.pt", "step_00000004.pt"]
    latest, newest = (ckpt / "latest.pt").stat(), (ckpt / "step_00000004.pt").stat()
    # latest.pt is the newest snapshot under a second name, not a second copy of its bytes.
    assert (latest.st_ino, latest.st_dev) == (newest.st_ino, newest.st_dev)
    assert load_checkpoint(ckpt / "latest.pt")["progress"]["step"] == 4


@pytest.mark.parametrize("damage", ["truncated", "empty", "deleted", "garbage"])
def test_resume_falls_back_to_the_newest_intact_snapshot(trained_run, damage, capsys, caplog):
    ckpt = trained_run / "checkpoints"
    latest = ckpt / "latest.pt"
    data = latest.read_bytes()
    latest.unlink()  # break the link first: damaging latest.pt must not touch the snapshot ...
    if damage != "deleted":
        latest.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    if damage == "truncated":
        # ... except when the snapshot it names is damaged too: then the one before is used.
        (ckpt / "step_00000004.pt").write_bytes(data[: len(data) // 3])
    path, state = load_run_checkpoint(trained_run)
    expected_step = 2 if damage == "truncated" else 4
    assert state["progress"]["step"] == expected_step and path.name == f"step_{expected_step:08d}.pt"
    assert "latest.pt" in caplog.text  # says which file it skipped and why
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(trained_run), "--set", "train.max_steps=6"]) == 0
    out = capsys.readouterr()
    assert f"at step {expected_step}" in out.out and "Traceback" not in out.err
    assert load_checkpoint(latest)["progress"]["step"] == 6


def test_no_intact_checkpoint_is_one_error_line(trained_run, capsys):
    for file in (trained_run / "checkpoints").glob("*.pt"):
        file.write_bytes(b"")
    status = cli_main(["train", "--resume", str(trained_run)])
    assert_one_error_line(capsys, status, str(trained_run), "no intact checkpoint")


def test_orphaned_temporary_files_go_at_the_next_save_and_resume(trained_run, demo_cache):
    ckpt = trained_run / "checkpoints"
    orphan = ckpt / ".step_00000006.pt.abc123.tmp"
    orphan.write_bytes(b"x" * 1000)
    load_run_checkpoint(trained_run)
    assert not orphan.exists()
    orphan.write_bytes(b"x" * 1000)
    assert cli_main(["train", "--resume", str(trained_run), "--set", "train.max_steps=5"]) == 0
    assert not list(ckpt.glob(".*.tmp"))


def test_a_full_disk_keeps_the_last_checkpoint(trained_run, monkeypatch, capsys):
    def disk_full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    status = cli_main(["train", "--resume", str(trained_run), "--set", "train.max_steps=6"])
    assert_one_error_line(capsys, status, "no space left")
    monkeypatch.undo()
    assert load_checkpoint(trained_run / "checkpoints" / "latest.pt")["progress"]["step"] == 4
    assert not list((trained_run / "checkpoints").glob(".*.tmp"))


def test_checkpoints_holding_code_are_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"weights": PickledCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "photo.png")
    translate = ["translate", "--checkpoint", str(evil), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    for argv in (["train", "--resume", str(evil)], translate):
        line = assert_one_error_line(capsys, cli_main(argv), str(evil), "refused")
        assert "weights_only=False" not in line and "re-run" not in line
    assert not marker.exists()


# -- kill -9 during saves ------------------------------------------------------------------------
def _newest_save_time(run):
    """The newest step checkpoint's mtime; a file the trainer prunes between glob and stat is skipped."""
    stamps = []
    for path in run.glob("checkpoints/step_*.pt"):
        try:
            stamps.append(path.stat().st_mtime_ns)
        except FileNotFoundError:  # rotated away by the running trainer (train.keep_checkpoints)
            pass
    return max(stamps, default=0)


@pytest.mark.slow
def test_kill_9_at_random_moments_never_loses_the_run(tmp_path, demo_cache):
    """Train with a save at every step and SIGKILL the process at random moments (often inside a
    save); each time, resume must find an intact checkpoint, and no temporary file survives the
    next save."""
    from gan_style.data.demo import ensure_demo_dataset

    ensure_demo_dataset()
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "gan_style.cli", "train", *TINY, "--set", "ngf=16", "--set", "ndf=16",
            "--set", "train.save_every=1", "--set", "train.log_every=1000", "--set", "train.image_every=1000",
            "--set", "train.n_epochs=10000"]
    rng = random.Random(7)
    steps_seen = []
    for round_ in range(4):
        command = base + (["--run-dir", str(run)] if round_ == 0 else ["--resume", str(run)]) + ["--set", "train.max_steps=100000"]
        before = _newest_save_time(run)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # wait for this process's first save
            if _newest_save_time(run) > before:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        path, state = load_run_checkpoint(run)  # never raises: something intact is always there
        steps_seen.append(state["progress"]["step"])
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    assert cli_main(["train", "--resume", str(run), *TINY[-2:], "--set", f"train.max_steps={steps_seen[-1] + 1}"]) == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["progress"]["step"] == steps_seen[-1] + 1


# -- the command line under bad options and files ------------------------------------------------
BAD_TRAIN_OPTIONS = {
    "crop larger than load": (["--set", "data.crop_size=64", "--set", "data.load_size=32"], "crop_size"),
    "batch size 0": (["--set", "train.batch_size=0"], "train.batch_size"),
    "negative lr": (["--set", "lr=-1"], "lr"),
    "NaN lr": (["--set", "lr=nan"], "lr"),
    "unknown gan_mode": (["--set", "gan_mode=lsgn"], "gan_mode"),
    "unknown preprocess": (["--set", "data.preprocess=zoom"], "preprocess"),
    "unknown lr_policy": (["--set", "train.lr_policy=exp"], "lr_policy"),
    "save_every 0": (["--set", "train.save_every=0"], "save_every"),
    "log_every 0": (["--set", "train.log_every=0"], "log_every"),
    "max_steps 0": (["--set", "train.max_steps=0"], "max_steps"),
    "max_steps negative": (["--set", "train.max_steps=-3"], "max_steps"),
    "unknown option": (["--set", "lambda_cycel=3"], "lambda_cycel"),
    "set without =": (["--set", "lambda_A"], "--set"),
    "missing data folder": (["--data", "/nonexistent/photos"], "/nonexistent/photos"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_OPTIONS))
def test_bad_training_options_are_one_error_line_before_any_run_folder(case, tmp_path, demo_cache, capsys):
    options, named = BAD_TRAIN_OPTIONS[case]
    run = tmp_path / "run"
    status = cli_main(["train", "--run-dir", str(run), *options])
    assert_one_error_line(capsys, status, named)
    assert not run.exists(), "validation must come before the run folder is made"


@pytest.mark.parametrize("content, named", [
    ("method: cyclegan\nngf: [16\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['touch /tmp/gan_style_yaml_ran']\n", "plain values only"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_recipes_are_one_error_line(content, named, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    status = cli_main(["train", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert_one_error_line(capsys, status, str(recipe), named)
    assert not Path("/tmp/gan_style_yaml_ran").exists()


def test_unwritable_run_folder_is_one_error_line(tmp_path, demo_cache, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status = train(blocker / "run", "--set", "train.max_steps=1")
    assert_one_error_line(capsys, status, "--run-dir", "a-file")


def test_corrupt_checkpoint_for_translate_is_one_error_line(tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"PK\x03\x04 truncated zip")
    image = tmp_path / "in"
    image.mkdir()
    Image.new("RGB", (8, 8)).save(image / "photo.png")
    status = cli_main(["translate", "--checkpoint", str(broken), "--input", str(image), "--output", str(tmp_path / "out")])
    assert_one_error_line(capsys, status, str(broken))


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    """The real process: one error line, status 2; --debug shows the traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "gan_style.cli", "train", "--run-dir", str(tmp_path / "r"), "--set", "train.batch_size=0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [result.stderr.strip().splitlines()[-1]]
    debug = subprocess.run(command + ["--debug"], env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_one_way_direction_and_unwritable_output_for_translate(tmp_path, demo_cache, capsys):
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods.cut import CUT

    run = tmp_path / "cut-run"
    Trainer(CUT(config_from_overrides(CUT, "smoke", {"train": {"max_steps": 1}})), run, show_progress=False).fit()
    photos = tmp_path / "in"
    photos.mkdir()
    Image.new("RGB", (20, 16)).save(photos / "photo.png")
    base = ["translate", "--checkpoint", str(run), "--input", str(photos)]
    assert_one_error_line(capsys, cli_main([*base, "--output", str(tmp_path / "out"), "--direction", "BtoA"]), "--direction BtoA", "one way")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_error_line(capsys, cli_main([*base, "--output", str(blocker / "out")]), "--output", "a-file")
    assert not (tmp_path / "out").exists()
    assert cli_main([*base, "--output", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "photo.png").size == (20, 16)
