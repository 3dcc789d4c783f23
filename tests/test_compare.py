"""``gan-style compare``: the report (grid, metrics, training cost), the two-up preference study in a
real browser (served, and opened as a file), and the Bradley-Terry tally of its votes.

One small 32 px report is made once per module: tiny CycleGAN, FastCUT and AdaIN runs (4 steps on
a hand-made dataset; AdaIN on a random encoder) and Gatys with seeded random VGG-19 weights (no
pretrained file is on this machine: the images are meaningless but go through the same code), on
three photos, one named with HTML's special characters, plus one unreadable file. (The released
AdaIN decoder.pth and vgg_normalised.pth load through the code of ``gan-style stylize``, tested
in test_adain.py.)
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from gan_style.cli import main
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.evaluation import tally as bt
from gan_style.evaluation.compare_command import training_speed
from gan_style.methods import get_method
from gan_style.nn.vgg import TORCHVISION_VGG19_FILE

ODD_NAME = 'a<b>&"c".png'  # a file name that must be escaped in HTML


def _picture(seed: int, size: int, painterly: bool) -> Image.Image:
    """A smooth random landscape-ish picture; "paintings" get a bold palette and stripes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 1, 3)
    image = np.stack([base[c] * (1 - y) + rng.uniform(0, 1) * y + 0.1 * np.sin(6 * x + c) for c in range(3)], axis=-1)
    if painterly:
        image = np.clip(image * 1.4 - 0.2 + 0.15 * np.sin(40 * (x + y))[..., None], 0, 1)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def _train(method: str, data: Path, run_dir: Path) -> Path:
    folders = {"content_dir": str(data / "trainA"), "style_dir": str(data / "trainB")} if method == "adain" else {"root": str(data)}
    overrides = {"data": {**folders, "load_size": 36, "crop_size": 32},
                 "train": {"max_steps": 4, "log_every": 1, "save_every": 1000, "image_every": 1000}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorboard's deprecation notices
        Trainer(get_method(method)(config_from_overrides(get_method(method), "smoke", overrides)), run_dir, show_progress=False).fit()
    return run_dir


def _random_vgg19(path: Path) -> Path:
    """VGG-19 in torchvision's layout with seeded random weights (no classifier storage)."""
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(report folder, the arguments that made it, what the command printed)."""
    root = tmp_path_factory.mktemp("compare")
    data, photos, paintings = root / "data", root / "photos", root / "paintings"
    for folder, painterly in (("trainA", False), ("trainB", True)):
        (data / folder).mkdir(parents=True)
        for i in range(4):
            _picture(10 * i + painterly, 40, painterly).save(data / folder / f"{i}.png")
    photos.mkdir()
    paintings.mkdir()
    for i, name in enumerate(["beach.png", ODD_NAME, "hill.jpg"]):
        _picture(100 + i, 48 if i != 2 else 60, False).save(photos / name)
    (photos / "broken.png").write_bytes(b"not an image")
    for i in range(4):
        _picture(200 + i, 48, True).save(paintings / f"{i}.png")
    style = root / "style.png"
    _picture(300, 48, True).save(style)
    weights = root / "weights"
    weights.mkdir()
    cyclegan = _train("cyclegan", data, root / "runs" / "cyclegan")
    fastcut = _train("fastcut", data, root / "runs" / "fastcut")
    adain = _train("adain", data, root / "runs" / "adain")  # its checkpoint holds the (random) encoder too
    report = root / "report"
    args = ["compare", "--checkpoint", str(cyclegan), "--checkpoint", f"FastCUT tiny={fastcut / 'checkpoints' / 'latest.pt'}",
            "--stylize", f"gatys:{style}", "--stylize", f"adain:{style}", "--gatys-iterations", "2",
            "--vgg-weights", str(_random_vgg19(weights / TORCHVISION_VGG19_FILE)),
            "--adain-decoder", str(adain),
            "--input", str(photos), "--real", str(paintings), "--output", str(report), "--size", "32", "--device", "cpu"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(args)
    assert status == 0, err.getvalue()
    return report, args, out.getvalue() + err.getvalue()


@pytest.fixture
def report(made, tmp_path):
    """A copy of the module's report that a test may vote in."""
    copy = tmp_path / "report"
    shutil.copytree(made[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["output"] = str(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_the_report_holds_every_method_on_every_readable_photo(made):
    report, _, printed = made
    manifest = json.loads((report / "manifest.json").read_text())
    labels = [c["label"] for c in manifest["columns"]]
    assert labels == ["source photo", "cyclegan", "FastCUT tiny", "gatys (style)", "adain (style)"]
    assert [p["name"] for p in manifest["photos"]] == [ODD_NAME, "beach.png", "hill.jpg"]
    assert "skipped" in printed and "broken.png" in printed  # the unreadable file, named
    assert {(p["width"], p["height"]) for p in manifest["photos"]} == {(32, 32)}  # 48 and 60 px shrunk to --size
    for column in manifest["columns"]:
        assert set(column["metrics"]) == {"swd", "ssim", "content_loss", "style_loss"}, column["label"]
        assert all(np.isfinite(v) for v in column["metrics"].values())
        for photo in manifest["photos"]:
            with Image.open(report / column["images"][photo["id"]]) as image:
                assert image.size == (photo["width"], photo["height"])
    source, cyclegan, fastcut, gatys, adain = manifest["columns"]
    assert source["metrics"]["ssim"] == pytest.approx(1.0) and cyclegan["metrics"]["ssim"] < 1.0
    assert cyclegan["cost"]["steps"] == 4 and fastcut["cost"]["steps"] == 4
    assert cyclegan["cost"]["sec_per_iteration"] > 0 and cyclegan["cost"]["timed_steps"] == 3  # steps 1..4 were logged
    assert "no training" in gatys["cost"]["note"] and adain["cost"]["steps"] == 4 and adain["cost"]["sec_per_iteration"] > 0
    assert all(c["cost"]["inference_sec_per_image"] > 0 for c in manifest["columns"][1:])
    page = (report / "index.html").read_text()
    assert ODD_NAME not in page and "a&lt;b&gt;&amp;&quot;c&quot;.png" in page
    assert page.index("source photo") < page.index("FastCUT tiny") and 'href="study.html"' in page
    study = (report / "study.html").read_text()
    assert "<b>" not in study and "FastCUT tiny" not in study  # the study does not name the methods


def test_training_speed_is_read_from_the_logs_of_each_session(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    # Two sessions (a resumed run): 2 s/step, then 4 s/step, with an hour between them.
    for session, (start, times) in enumerate([(0, [100.0, 102.0, 104.0]), (2, [3700.0, 3704.0])]):
        writer = SummaryWriter(str(tmp_path / "tensorboard"), filename_suffix=f".{session}")
        for offset, wall in enumerate(times):
            writer.add_scalar("loss/G", 1.0, start + offset + 1, walltime=wall)
        writer.close()
    per_iteration, steps = training_speed(tmp_path)
    assert steps == 3 and per_iteration == pytest.approx((4 + 4) / 3)
    assert training_speed(tmp_path / "nothing") == (None, 0)


def _votes(pairs):
    return [bt.Vote("p", a, b, choice) for a, b, choice in pairs]


def test_bradley_terry_matches_closed_forms_and_the_likelihood_equations():
    # Two methods, no prior: the MLE odds are the win ratio, s_A / s_B = 3 / 1; a tie is half a win.
    scores = bt.bradley_terry(["A", "B"], _votes([("A", "B", "left")] * 3 + [("B", "A", "left")]), prior=0)
    assert scores == pytest.approx([0.75, 0.25])
    scores = bt.bradley_terry(["A", "B"], _votes([("A", "B", "left")] * 2 + [("A", "B", "tie")] * 2), prior=0)
    assert scores == pytest.approx([0.75, 0.25])
    assert bt.bradley_terry(["A", "B", "C"], _votes([("A", "B", "tie"), ("B", "C", "tie")])) == pytest.approx([1 / 3] * 3)
    # Three methods: at the maximum, each method's (virtual and real) wins equal their expectation.
    votes = _votes([("A", "B", "left")] * 7 + [("B", "A", "left")] * 3 + [("B", "C", "left")] * 6 + [("C", "B", "tie")] * 2
                   + [("A", "C", "right")] * 1 + [("C", "A", "right")] * 5)
    s = bt.bradley_terry(["A", "B", "C"], votes, prior=1.0)
    assert s[0] > s[1] > s[2] and s.sum() == pytest.approx(1.0)
    index = {"A": 0, "B": 1, "C": 2}
    wins, pairs = np.full(3, 1.0), np.ones((3, 3)) - np.eye(3)  # the virtual ties: half a win per pair
    for v in votes:
        i, j = index[v.left], index[v.right]
        share = {"left": 1.0, "right": 0.0, "tie": 0.5}[v.choice]
        wins[i] += share
        wins[j] += 1 - share
        pairs[i, j] += 1
        pairs[j, i] += 1
    expected = (pairs * s[:, None] / (s[:, None] + s[None, :])).sum(axis=1)
    assert wins == pytest.approx(expected, rel=1e-6)
    # A method that never loses stays finite thanks to the prior.
    assert np.isfinite(bt.bradley_terry(["A", "B"], _votes([("A", "B", "left")] * 5))).all()


def test_bootstrap_intervals_are_seeded_and_shrink_with_more_votes():
    few = _votes([("A", "B", "left")] * 6 + [("B", "A", "left")] * 4)
    ranking = bt.rank(["A", "B"], few, bootstrap=200, seed=1)
    assert [r.method for r in ranking] == ["A", "B"] and ranking[0].wins == 6 and ranking[0].comparisons == 10
    assert all(r.low <= r.score <= r.high for r in ranking)
    assert bt.rank(["A", "B"], few, bootstrap=200, seed=1) == ranking
    many = bt.rank(["A", "B"], few * 20, bootstrap=200, seed=1)
    assert many[0].high - many[0].low < 0.5 * (ranking[0].high - ranking[0].low)


def test_tally_ranks_the_votes_and_rewrites_the_ranking(report, capsys):
    manifest = json.loads((report / "manifest.json").read_text())
    photo = manifest["photos"][0]["id"]
    lines = [json.dumps({"photo": photo, "left": "adain-style", "right": winner, "choice": "right", "session": "s", "time": f"{winner}{k}"})
             for winner in ["cyclegan", "fastcut-tiny", "gatys-style"] for k in range(4)]
    lines += [json.dumps({"photo": photo, "left": "cyclegan", "right": "fastcut-tiny", "choice": "left", "time": str(k)}) for k in range(5)]
    lines += ["not json", json.dumps({"photo": photo, "left": "cyclegan", "right": "nobody", "choice": "left"}), ""]
    (report / "votes.jsonl").write_text("\n".join(lines) + "\n")
    downloaded = report.parent / "downloaded.jsonl"
    downloaded.write_text(lines[0] + "\n" + json.dumps({"photo": photo, "left": "gatys-style", "right": "cyclegan", "choice": "tie"}) + "\n")
    assert "No votes tallied yet" in (report / "index.html").read_text()
    assert main(["compare", "--tally", str(report), "--votes", str(downloaded), "--bootstrap", "100"]) == 0
    out, err = capsys.readouterr()
    assert "skipped 2 line(s)" in err  # the bad line and the unknown method
    ranking = json.loads((report / "ranking.json").read_text())
    assert ranking["votes"] == 12 + 5 + 1  # the duplicate of a server vote counted once
    order = [r["method"] for r in ranking["methods"]]
    assert order[0] == "cyclegan" and order[-1] == "adain-style"
    assert out.splitlines()[1].split()[:2] == ["1", "cyclegan"]
    page = (report / "index.html").read_text()
    assert "No votes tallied yet" not in page and "18 vote(s)" in page
    assert page.index('data-method="cyclegan"') < page.index('data-method="adain-style"')


def test_compare_errors_name_the_option(made, tmp_path, capsys, monkeypatch):
    report, args, _ = made
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached VGG-19 to fall back on
    photos, paintings = args[args.index("--input") + 1], args[args.index("--real") + 1]
    style = args[args.index("--stylize") + 1]

    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "one thing at a time" in error(["compare", "--tally", str(report), "--serve", str(report)])
    assert "--stylize expects METHOD:STYLE_IMAGE" in error(["compare", "--stylize", "monet:x.jpg", "--input", photos, "--real", photos, "--output", str(tmp_path / "o")])
    assert "--vgg-weights" in error(["compare", "--stylize", style, "--input", photos, "--real", paintings, "--output", str(tmp_path / "o"), "--size", "32"])
    assert "inside the --input folder" in error(["compare", "--stylize", style, "--input", photos, "--real", paintings, "--output", str(Path(photos) / "sub")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    assert "holds other files" in error(["compare", "--checkpoint", args[2], "--input", photos, "--real", paintings, "--output", str(busy)])
    assert (busy / "thesis.tex").read_text() == "keep me"
    assert "no votes" in error(["compare", "--tally", str(report)])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert "choose another --port" in error(["compare", "--serve", str(report), "--port", str(taken.getsockname()[1])])
    assert "not a compare report" in error(["compare", "--tally", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(report):
    """``gan-style compare --serve REPORT`` in a process of its own: (report, base URL)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "gan_style.cli", "compare", "--serve", str(report), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/index.html", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"the server stopped: {server.stdout.read()}")
                time.sleep(0.1)
        else:
            pytest.fail(f"gan-style compare --serve did not answer on {url} within 30 s")
        yield report, url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _images_rendered(browser) -> list[str]:
    """The src of every <img> on the page that did not load (naturalWidth 0)."""
    return browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")


def _wait(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _cast_votes(browser, actions):
    """Cast one vote per action (click on a button or an image, or a key) and return the
    (photo, left, right, choice) each one should have recorded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    keys = {"ArrowLeft": Keys.ARROW_LEFT, "ArrowRight": Keys.ARROW_RIGHT, "ArrowDown": Keys.ARROW_DOWN}
    expected = []
    for how, choice in actions:
        pair = browser.execute_script("var p = study.pairs[study.index]; return [p.photo.id, p.left.key, p.right.key];")
        _wait(lambda: not _images_rendered(browser))
        if how.startswith("#"):
            browser.find_element(By.CSS_SELECTOR, how).click()
        else:
            browser.find_element(By.TAG_NAME, "body").send_keys(keys.get(how, how))
        expected.append((*pair, choice))
    return expected


def test_served_report_and_study_in_chromium(served, browser):
    from selenium.webdriver.common.by import By

    report, url = served
    browser.get(f"{url}/index.html")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid img")) == 3 * 5
    _wait(lambda: not _images_rendered(browser))
    browser.find_element(By.LINK_TEXT, "the two-up preference study").click()
    _wait(lambda: browser.execute_script("return window.study !== undefined"))
    assert browser.execute_script("return study.served") and browser.execute_script("return study.pairs.length") == 3 * 6
    actions = [("#vote-left", "left"), ("#vote-right", "right"), ("#vote-tie", "tie"), ("#left-image", "left"),
               ("ArrowLeft", "left"), ("ArrowRight", "right"), ("ArrowDown", "tie"), ("1", "left"), ("2", "right"), ("0", "tie")]
    expected = _cast_votes(browser, actions)
    _wait(lambda: browser.execute_script("return study.saved") == len(actions))
    assert "10 vote(s) saved" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "progress").text == f"pair {len(actions) + 1} of 18"
    lines = [json.loads(line) for line in (report / "votes.jsonl").read_text().splitlines()]
    assert [(v["photo"], v["left"], v["right"], v["choice"]) for v in lines] == expected
    assert len({v["session"] for v in lines}) == 1 and all(v["time"] and v["voter"] for v in lines)
    # A vote that is not of this report is refused, and not written.
    request = urllib.request.Request(f"{url}/votes", data=json.dumps({"photo": "x", "left": "a", "right": "b", "choice": "left"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400 and len((report / "votes.jsonl").read_text().splitlines()) == len(actions)

    assert main(["compare", "--tally", str(report), "--bootstrap", "50"]) == 0
    ranking = json.loads((report / "ranking.json").read_text())
    assert ranking["votes"] == len(actions)
    wins = {m: 0.0 for m in ("cyclegan", "fastcut-tiny", "gatys-style", "adain-style")}
    for _, left, right, choice in expected:
        wins[left] += {"left": 1, "tie": 0.5}.get(choice, 0)
        wins[right] += {"right": 1, "tie": 0.5}.get(choice, 0)
    assert {r["method"]: r["wins"] for r in ranking["methods"]} == wins
    browser.get(f"{url}/index.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#ranking-table tr[data-method]")
    assert [row.get_attribute("data-method") for row in rows] == [r["method"] for r in ranking["methods"]]
    assert f"{len(actions)} vote(s)" in browser.find_element(By.ID, "ranking-status").text


def test_study_opened_as_a_file_keeps_votes_for_download(report, browser):
    from selenium.webdriver.common.by import By

    browser.get((report / "study.html").as_uri() + "?seed=7")
    _wait(lambda: browser.execute_script("return window.study !== undefined"))
    assert not browser.execute_script("return study.served")
    order = browser.execute_script("return study.pairs.map(p => [p.photo.id, p.left.key, p.right.key]);")
    browser.get((report / "study.html").as_uri() + "?seed=7")  # the same seed, the same order
    assert browser.execute_script("return study.pairs.map(p => [p.photo.id, p.left.key, p.right.key]);") == order
    assert "Opened as a file" in browser.find_element(By.ID, "status").text
    expected = _cast_votes(browser, [("1", "left"), ("2", "right"), ("#vote-tie", "tie")])
    _wait(lambda: not _images_rendered(browser))
    browser.find_element(By.ID, "download").click()
    downloaded = browser.download_dir / "votes.jsonl"
    _wait(lambda: downloaded.is_file() and downloaded.read_text().count("\n") == 3)
    lines = [json.loads(line) for line in downloaded.read_text().splitlines()]
    assert [(v["photo"], v["left"], v["right"], v["choice"]) for v in lines] == expected
    assert not (report / "votes.jsonl").exists()
    assert main(["compare", "--tally", str(report), "--votes", str(downloaded), "--bootstrap", "50"]) == 0
    assert json.loads((report / "ranking.json").read_text())["votes"] == 3
