"""``ganinvert ui`` driven in headless Chromium (Debian's ``chromium`` package, through Playwright;
Playwright's own browser downloads are never used): the live inversion, Stop, the result zip,
edit sliders, a mask painted on the canvas, SPHInX draws, and bad uploads.

Skips when Chromium, Playwright or Gradio is absent, or without ../shared (the face and the LPIPS
weights). With GANINVERT_UI_SCREENSHOTS=DIR it writes a small PNG of each tab to DIR (the
README's screenshots: ``GANINVERT_UI_SCREENSHOTS=docs python -m pytest tests/ui/test_ui_browser.py``).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tests.conftest import shared_file

pytest.importorskip("gradio", reason="the ui extra is not installed (pip install -e '.[ui]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)", allow_module_level=True)

# Records every new src of an <img> under a selector, with its time, in window.__srcs[selector].
WATCH = """(selector) => {
  window.__srcs = window.__srcs || {};
  const seen = window.__srcs[selector] = [];
  const root = document.querySelector(selector);
  const note = () => {
    const img = root.querySelector('img');
    if (img && img.src && (!seen.length || seen[seen.length - 1].src !== img.src))
      seen.push({src: img.src, t: performance.now()});
  };
  new MutationObserver(note).observe(root, {subtree: true, childList: true, attributes: true,
                                            attributeFilter: ['src']});
  note();
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 sockets listening on ``port`` (from /proc/net/tcp)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return addresses


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    weights = shared_file("weights", "lpips_alex.pth")
    work = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {**os.environ, "GANINVERT_CACHE": str(work / "cache"), "GRADIO_TEMP_DIR": str(work / "gradio"),
           "TMPDIR": str(work)}
    log = work / "server.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ganinvert.cli", "ui", "--port", str(port),
                                 "--lpips-weights", str(weights)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 90:
            proc.kill()
            pytest.fail(f"ganinvert ui did not start:\n{log.read_text()}")
        time.sleep(0.1)
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(v) for v in Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]) / ticks
    info = SimpleNamespace(url=url, port=port, proc=proc, startup=time.perf_counter() - started, startup_cpu=cpu,
                           log=log, env=env, work=work, timings={})
    yield info
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: gradio closes, the CLI removes its work folder
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    print(f"\nui timings: {json.dumps(info.timings)}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    # The page must work offline: anything not served by the app is refused.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
               else route.abort())
    page.goto(server.url)
    page.wait_for_selector("#invert-run")
    yield page
    context.close()


def wait_text(page, selector: str, pattern: str, timeout: float = 120) -> str:
    page.wait_for_function("([s, p]) => new RegExp(p).test(document.querySelector(s).innerText)",
                           arg=[selector, pattern], timeout=timeout * 1000)
    return page.inner_text(selector).strip()


def pick(page, selector: str, option: str, prefix: bool = False) -> None:
    """Choose the dropdown option labelled ``option`` (or the first that starts with it)."""
    page.click(f"{selector} input")
    page.locator(f'ul.options li[aria-label{"^" if prefix else ""}="{option}"]').first.click()


def srcs(page, selector: str) -> list[dict]:
    return page.evaluate("(s) => window.__srcs[s]", selector)


def image_bytes(page, src: str) -> bytes:
    return page.request.get(src).body()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("GANINVERT_UI_SCREENSHOTS")
    if folder:
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        shot.quantize(colors=96).save(Path(folder) / f"ui-{name}.png", optimize=True)


def test_starts_quickly_on_loopback_only(server):
    server.timings.update(startup_s=round(server.startup, 2), startup_cpu_s=round(server.startup_cpu, 2))
    # Its own CPU time always; the wall time too unless other jobs oversubscribe the machine's cores.
    assert server.startup_cpu < 15, f"ganinvert ui used {server.startup_cpu:.1f} s of CPU to serve its page"
    if os.getloadavg()[0] <= os.cpu_count():
        assert server.startup < 15, f"ganinvert ui took {server.startup:.1f} s to serve its page"
    assert listening_addresses(server.port) == {"127.0.0.1"}


def test_invert_live_stop_download_edit_inpaint_and_draws(page, server, tmp_path):
    face = sorted(shared_file("data", "images", "celeba_hq").glob("*.jpg"))[0]

    # Invert: w+ for 50 steps, the reconstruction changing live.
    page.set_input_files("#invert-upload input[type=file]", str(face))
    wait_text(page, "#invert-status", "loaded")
    pick(page, "#method", "w+")
    page.fill("#steps input", "50")
    page.press("#steps input", "Tab")
    page.evaluate(WATCH, "#live-image")
    pressed = page.evaluate("performance.now()")
    page.click("#invert-run")
    status = wait_text(page, "#invert-status", "done|⚠")
    assert status.startswith("done: #1 w+") and "50 steps" in status, status
    live = srcs(page, "#live-image")
    assert len({image_bytes(page, s["src"]) for s in live}) >= 3, f"{len(live)} live images"
    server.timings["invert_to_first_live_image_s"] = round((live[0]["t"] - pressed) / 1000, 3)
    metrics = page.inner_text("#invert-metrics")
    assert re.search(r"PSNR [\d.]+ dB · SSIM [\d.]+ · MS-SSIM [\d.]+ · LPIPS [\d.]+", metrics), metrics
    assert "step 50/50" in page.inner_text("#invert-progress")
    screenshot(page, "invert")

    # The result folder as a zip, whose result.safetensors `ganinvert render` accepts.
    with page.expect_download() as download:
        page.click("#invert-download a")
    archive = tmp_path / "result.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "unzipped")
    tensors = list((tmp_path / "unzipped").rglob("result.safetensors"))
    assert len(tensors) == 1 and tensors[0].with_suffix(".json").is_file()
    render = subprocess.run([sys.executable, "-m", "ganinvert.cli", "render", str(tensors[0]), "--out",
                             str(tmp_path / "x.png")], cwd=REPO, env=server.env, capture_output=True, text=True)
    assert render.returncode == 0, render.stderr
    assert Image.open(tmp_path / "x.png").size == (64, 64)

    # A second run (SPHInX, 400 steps) stopped mid-way keeps what it has.
    pick(page, "#method", "sphinx")
    page.fill("#steps input", "400")
    page.press("#steps input", "Tab")
    page.evaluate(WATCH, "#live-image")
    page.click("#invert-run")
    page.wait_for_function("window.__srcs['#live-image'].length >= 3", timeout=120_000)
    page.click("#invert-stop")
    status = wait_text(page, "#invert-status", "stopped|done|⚠")
    stopped = re.match(r"stopped at step (\d+): #2 sphinx", status)
    assert stopped and int(stopped.group(1)) < 400, status
    assert page.locator("#live-image img").count() == 1 and "PSNR" in page.inner_text("#invert-metrics")

    # The zip uploaded back is a result of the session again.
    page.set_input_files("#result-upload input[type=file]", str(archive))
    assert wait_text(page, "#invert-status", "loaded|⚠").startswith("loaded #3 w+")

    # Edit: each slider move re-renders; 20 moves timed from key press to the new image.
    page.get_by_role("tab", name="Edit").click()
    wait_text(page, "#edit-status", "rendered|⚠")
    page.evaluate(WATCH, "#edit-image")
    slider = page.locator("#pca-0 input[type=range]")
    slider.focus()
    seconds = []
    for move in range(20):
        before = len(srcs(page, "#edit-image"))
        pressed = page.evaluate("performance.now()")
        slider.press("ArrowRight")
        page.wait_for_function(f"window.__srcs['#edit-image'].length > {before}", timeout=30_000)
        seconds.append((srcs(page, "#edit-image")[-1]["t"] - pressed) / 1000)
    edits = srcs(page, "#edit-image")
    assert image_bytes(page, edits[0]["src"]) != image_bytes(page, edits[-1]["src"])
    assert page.input_value("#pca-0 input[type=number]") == "5"
    server.timings["slider_move_median_s"] = round(statistics.median(seconds), 3)
    server.timings["slider_render_in_handler"] = page.inner_text("#edit-status").strip()
    assert statistics.median(seconds) < 1.0, seconds
    screenshot(page, "edit")

    # Restore: paint a mask on the canvas and inpaint.
    page.get_by_role("tab", name="Restore").click()
    page.set_input_files("#restore-upload input[type=file]", str(face))
    wait_text(page, "#restore-status", "loaded")
    page.wait_for_timeout(500)  # the canvas draws the image
    box = page.locator("#restore-canvas canvas").last.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for dy in range(-30, 31, 10):
        page.mouse.move(cx - 50, cy + dy)
        page.mouse.down()
        for k in range(11):
            page.mouse.move(cx - 50 + 10 * k, cy + dy)
        page.mouse.up()
    page.locator("#restore-task label", has_text="inpaint").click()
    page.fill("#restore-steps input", "30")
    page.press("#restore-steps input", "Tab")
    page.click("#restore-run")
    status = wait_text(page, "#restore-status", "done|⚠")
    assert status.startswith("done: #4 inpaint w+"), status
    for name in ("measurement", "restoration", "clean"):
        assert page.locator(f"#restore-{name} img").count() == 1, name
    measurement = Image.open(io.BytesIO(image_bytes(page, page.get_attribute("#restore-measurement img", "src"))))
    clean = Image.open(io.BytesIO(image_bytes(page, page.get_attribute("#restore-clean img", "src"))))
    hole = torch.tensor(list(measurement.convert("L").getdata())) == 0
    assert 0.05 < float(hole.float().mean()) < 0.6  # the painted region is missing, the rest is seen
    assert measurement.size == clean.size
    assert "measurement PSNR" in page.inner_text("#restore-metrics")
    screenshot(page, "restore")

    # SPHInX draws: fresh z+ draws of the stopped SPHInX result.
    page.get_by_role("tab", name="Robustness / SPHInX draws").click()
    pick(page, "#draws-result", "#2 sphinx", prefix=True)
    page.click("#draws-run")
    assert "fresh draws of sphinx" in wait_text(page, "#draws-status", "draws|deterministic|⚠")
    assert page.locator("#draws-image img").count() == 1
    screenshot(page, "draws")


def test_bad_uploads_show_one_line_and_the_server_stays_up(page, server, tmp_path):
    fake = tmp_path / "not_an_image.png"
    fake.write_text("this is text, not a PNG")
    page.set_input_files("#invert-upload input[type=file]", str(fake))
    assert wait_text(page, "#invert-status", "⚠") == \
        "⚠ not_an_image.png is not an image file that can be read (PNG, JPEG, WebP, …)"

    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)
    page.set_input_files("#invert-upload input[type=file]", str(huge))
    assert wait_text(page, "#invert-status", "huge") == \
        "⚠ huge.png is 10000×10000 px (100 MP); images up to 40 MP are accepted"

    page.get_by_role("tab", name="Edit").click()
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(7), wrong)
    page.set_input_files("#direction-file input[type=file]", str(wrong))
    message = wait_text(page, "#edit-status", "⚠")
    assert message.startswith("⚠ direction in wrong.pt has shape (7,)") and "\n" not in message, message
    assert "Traceback" not in page.content()

    assert server.proc.poll() is None
    page.get_by_role("tab", name="Invert").click()
    page.click("#invert-example")
    assert wait_text(page, "#invert-status", "example.png loaded").startswith("example.png loaded: 64×64 px")
