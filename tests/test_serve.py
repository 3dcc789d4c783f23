"""gan-style serve: the HTTP API, the page in a real (headless) browser, and a bounded load test
with hostile uploads against the command itself."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods import get_method

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

METHODS = ("cut", "munit", "swapae", "adain")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> a one-step run of the method's smoke preset."""
    root = tmp_path_factory.mktemp("serve_runs")
    runs = {}
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setenv("GAN_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "gan_style_cache"))
        for name in METHODS:
            config = config_from_overrides(get_method(name), "smoke", {"train": {"max_steps": 1}})
            Trainer(get_method(name)(config), root / name, show_progress=False).fit()
            runs[name] = root / name
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """The app on 127.0.0.1 in a thread (small limits, so that the refusals are cheap to test)."""
    from gan_style.serve.app import Limits, create_app

    limits = Limits(max_upload_bytes=600_000, max_pixels=1_000_000, tile_above=96, tile=64)
    app = create_app([runs[name] for name in METHODS], device="cpu", limits=limits)
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)


def photo_bytes(width: int, height: int, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_bytes(side: int = 4000) -> bytes:
    """A tiny PNG of side x side pixels: 16 M pixels in about 50 kB."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def post(base: str, model: str, image: bytes, timeout: float = 60, **fields) -> httpx.Response:
    files = {"image": ("photo.png", image, "image/png")}
    data = {"model": model}
    for key, value in fields.items():
        if isinstance(value, bytes):
            files[key] = (f"{key}.png", value, "image/png")
        else:
            data[key] = str(value)
    return httpx.post(f"{base}/translate", data=data, files=files, timeout=timeout)


def test_the_api_lists_and_translates(server):
    listing = httpx.get(f"{server}/models").json()
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == set(METHODS)
    assert [i["name"] for i in by_name["swapae"]["inputs"]["AtoB"]] == ["texture", "alpha", "seed"]
    assert by_name["munit"]["directions"] == ["AtoB", "BtoA"]
    answer = post(server, "cut", photo_bytes(45, 37))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(answer.content)).size == (45, 37)
    # large photos go through the tiler (tile_above=96 here) and keep their size
    assert Image.open(io.BytesIO(post(server, "cut", photo_bytes(150, 70)).content)).size == (150, 70)
    # MUNIT: a random style per seed, or an example's style
    one, two = post(server, "munit", photo_bytes(40, 32), seed=1), post(server, "munit", photo_bytes(40, 32), seed=2)
    assert one.status_code == two.status_code == 200 and one.content != two.content
    assert post(server, "munit", photo_bytes(40, 32), style=photo_bytes(32, 32, seed=4), direction="BtoA").status_code == 200
    # JSON in, JSON out (base64 images)
    body = {"model": "adain", "image": base64.b64encode(photo_bytes(40, 30)).decode(),
            "style": "data:image/png;base64," + base64.b64encode(photo_bytes(32, 32, seed=3)).decode(), "alpha": 0.5}
    answer = httpx.post(f"{server}/translate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert (reply["width"], reply["height"]) == (40, 30)
    assert Image.open(io.BytesIO(base64.b64decode(reply["image"].partition(",")[2]))).size == (40, 30)


@pytest.mark.parametrize("case, status, words", [
    ("non-image", 400, "image: not an image"),
    ("truncated", 400, "image: a truncated or damaged image"),
    ("bomb", 400, "more than this server decodes"),
    ("oversize", 413, "larger than this server accepts"),
    ("unknown model", 404, "no model 'nope'"),
    ("no texture", 400, "needs the image 'texture'"),
    ("bad alpha", 400, "alpha must be in [0, 1]"),
    ("unknown field", 400, "unknown field(s) colour"),
    ("not a form", 400, "send a multipart form"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(server, case, status, words):
    good = photo_bytes(40, 32)
    if case == "not a form":
        answer = httpx.post(f"{server}/translate", content=b"hello", headers={"content-type": "text/plain"})
    else:
        model, image, fields = {
            "non-image": ("cut", b"%PDF-1.4 not an image", {}),
            "truncated": ("cut", good[: len(good) // 2], {}),
            "bomb": ("cut", bomb_bytes(), {}),
            "oversize": ("cut", os.urandom(700_000), {}),
            "unknown model": ("nope", good, {}),
            "no texture": ("swapae", good, {}),
            "bad alpha": ("adain", good, {"style": good, "alpha": 3}),
            "unknown field": ("cut", good, {"colour": "red"}),
        }[case]
        answer = post(server, model, image, **fields)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert post(server, "cut", good).status_code == 200, "the server keeps serving"


def wait_for(browser, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda driver: condition())


def test_the_page_translates_an_uploaded_photo_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    photo = tmp_path / "photo.png"
    photo.write_bytes(photo_bytes(52, 36))
    browser.get(server + "/")
    wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#model option")) == len(METHODS))
    Select(browser.find_element(By.ID, "model")).select_by_value("cut")
    browser.find_element(By.ID, "image").send_keys(str(photo))
    result = browser.find_element(By.ID, "result")
    wait_for(browser, lambda: result.get_attribute("data-version") == "1")
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", result) == [52, 36]
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    # MUNIT: "new random style" gives another translation
    Select(browser.find_element(By.ID, "model")).select_by_value("munit")
    wait_for(browser, lambda: result.get_attribute("data-version") == "2")
    first = result.get_attribute("data-checksum")
    browser.find_element(By.ID, "random-style").click()
    wait_for(browser, lambda: result.get_attribute("data-version") == "3")
    assert result.get_attribute("data-checksum") != first


def test_the_swap_page_slider_changes_the_output(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    structure, texture = tmp_path / "structure.png", tmp_path / "texture.jpg"
    structure.write_bytes(photo_bytes(64, 48, seed=1))
    texture.write_bytes(photo_bytes(48, 48, seed=2, fmt="JPEG"))
    browser.get(server + "/")
    wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#model option")) == len(METHODS))
    Select(browser.find_element(By.ID, "model")).select_by_value("swapae")
    assert "Structure image" in browser.find_element(By.ID, "image-label").text
    browser.find_element(By.ID, "input-texture").send_keys(str(texture))
    browser.find_element(By.ID, "image").send_keys(str(structure))
    result = browser.find_element(By.ID, "result")
    wait_for(browser, lambda: int(result.get_attribute("data-version")) >= 1 and not browser.execute_script("return busy"))
    assert browser.execute_script("return arguments[0].naturalWidth", result) == 64
    version, swapped = result.get_attribute("data-version"), result.get_attribute("data-checksum")
    slider = browser.find_element(By.ID, "input-alpha")
    slider.send_keys(Keys.HOME)  # alpha 1 -> 0: the structure image's own texture
    slider.send_keys(Keys.TAB)  # leaving the slider fires its change event (as letting go of it does)
    wait_for(browser, lambda: result.get_attribute("data-version") != version and not browser.execute_script("return busy"))
    assert browser.find_element(By.ID, "alpha-value").text == "0"
    assert result.get_attribute("data-checksum") != swapped


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_a_bounded_load_with_hostile_uploads(runs, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "gan_style.cli", "serve", "--checkpoint", str(runs["cut"]), "--checkpoint", str(runs["munit"]),
               "--port", str(port), "--device", "cpu", "--max-upload-mb", "1", "--max-pixels", "2000000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)
        settled = peak_rss_mb(process.pid)
        sizes = [(40 + 8 * (i % 5), 32 + 4 * (i % 3)) for i in range(50)]
        hostile = {"oversize": (os.urandom(1_200_000), 413), "bomb": (bomb_bytes(3000), 400), "non-image": (b"GIF89a? no", 400)}

        def client(i: int) -> tuple[int, tuple[int, int] | None]:
            if i % 10 == 5:  # every tenth request is hostile, while the others are served
                data, _ = list(hostile.values())[i // 10 % 3]
                return post(base, "cut", data, timeout=120).status_code, None
            width, height = sizes[i]
            answer = post(base, "cut" if i % 2 else "munit", photo_bytes(width, height, seed=i), timeout=120, **({} if i % 2 else {"seed": i}))
            return answer.status_code, Image.open(io.BytesIO(answer.content)).size if answer.status_code == 200 else None

        started = time.time()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(client, range(50)))
        seconds = time.time() - started
        for i, (status, size) in enumerate(answers):
            if i % 10 == 5:
                assert status == list(hostile.values())[i // 10 % 3][1], i
            else:
                assert status == 200 and size == sizes[i], (i, status, size)
        assert post(base, "cut", photo_bytes(40, 32)).status_code == 200
        peak = peak_rss_mb(process.pid)
        print(f"load: 50 requests (45 photos, 5 hostile) from 8 clients in {seconds:.1f} s; "
              f"server RSS {settled:.0f} MB after start, peak {peak:.0f} MB")
        # one model instance per checkpoint, one image in flight per model: the peak stays near the start
        assert peak < settled + 300, (settled, peak)
    finally:
        process.terminate()
        process.wait(20)
