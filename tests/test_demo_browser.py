"""`slotvlm demo` in a real headless browser: Debian's chromium + chromedriver driven by selenium.

The page is opened, a generated clip uploaded, a question asked; the test waits for the streamed
answer (checked against ``SlotVLM.generate`` on an independently loaded copy of the model) and the
slot picture (checked against the size of the one ``visualize_video`` draws), then saves a
screenshot (its path is printed; ``SLOTVLM_DEMO_SCREENSHOT=FILE`` also copies it there).

chromium and chromium-driver are installed with apt-get when missing (CI runs as root on Debian);
the test is skipped, saying why, only if that fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import unicodedata

import pytest

pytest.importorskip("gradio", reason="slotvlm demo needs gradio (demo/test extra)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (test extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from slotvlm.model import SlotVLM  # noqa: E402
from slotvlm.testing import make_clip, make_tiny_slotvlm  # noqa: E402

QUESTION = "What is happening in the video?"
QUESTION2 = "How many people are there?"
# the texts of the chat's messages of one role, read in one call (the chat re-renders while streaming)
ROLE_TEXTS = ("return Array.from(document.querySelectorAll(`#chat .${arguments[0]}, "
              "#chat [data-testid='${arguments[0]}']`)).map(e => e.textContent)")


def _find_browser() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"),
            shutil.which("chromedriver") or (os.path.isfile("/usr/lib/chromium/chromedriver")
                                             and "/usr/lib/chromium/chromedriver") or None)


@pytest.fixture(scope="module")
def browser_paths():
    chrome, driver = _find_browser()
    if chrome and driver:
        return chrome, driver
    if shutil.which("apt-get") is None:
        pytest.skip("chromium/chromedriver are not installed and there is no apt-get to install them")
    if os.geteuid() != 0:
        pytest.skip("chromium/chromedriver are not installed and installing them with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                pytest.skip(f"installing chromium failed ({' '.join(cmd)} exit {res.returncode}): "
                            f"{(res.stderr or res.stdout)[-300:]}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"installing chromium failed: {exc}")
    chrome, driver = _find_browser()
    if not (chrome and driver):
        pytest.skip("apt-get installed chromium but chromium/chromedriver are still not on PATH")
    return chrome, driver


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_tiny_slotvlm(root / "models"), make_clip(root / "clip.mp4", seconds=6, fps=2, size=96), root


@pytest.fixture(scope="module")
def demo_url(tiny):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from slotvlm.serve.demo import build_demo

    model_dir, _, root = tiny
    model = SlotVLM.from_pretrained(model_dir, device="cpu")
    demo = build_demo(model, figure_dir=str(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False,
                        quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def driver(browser_paths):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chrome, chromedriver = browser_paths
    opts = Options()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--hide-scrollbars"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def test_demo_in_browser(driver, demo_url, tiny, tmp_path):
    model_dir, clip, _ = tiny
    ref = SlotVLM.from_pretrained(model_dir, device="cpu").eval()
    embeds = ref.encode_video([ref.load_video(clip)])
    want = ref.generate(embeds, [QUESTION], max_new_tokens=64)[0]
    want2 = ref.generate(embeds, [QUESTION2], max_new_tokens=64, history=[[(QUESTION, want)]])[0]
    from slotvlm.model.visualize import visualize_video

    from PIL import Image

    visualize_video(ref, clip, str(tmp_path / "ref.png"))  # the PNG it writes (whatever it returns)
    fig = Image.open(tmp_path / "ref.png")

    wait = WebDriverWait(driver, 180, poll_frequency=0.25)
    driver.get(demo_url)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#video input[type=file]"))
    upload.send_keys(str(clip))

    def slot_image(d):
        for img in d.find_elements(By.CSS_SELECTOR, "#slots img"):
            if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img):
                return img
        return None

    img = wait.until(slot_image)
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size == [fig.width, fig.height]  # the picture visualize_video draws for this clip

    box = wait.until(lambda d: next((t for t in d.find_elements(By.CSS_SELECTOR, "#question textarea")
                                     if t.is_enabled()), None))
    box.send_keys(QUESTION)
    box.send_keys(Keys.ENTER)

    def visible(text: str) -> str:
        """What a page shows of a text: no control characters, whitespace runs collapsed."""
        return " ".join("".join(ch for ch in text if unicodedata.category(ch) != "Cc").split())

    def messages(d, role):
        """The messages of ``role`` in order (one message may match both selectors: de-duplicated)."""
        out = []
        for t in d.execute_script(ROLE_TEXTS, role):
            t = visible(t)
            if t and (not out or out[-1] != t):
                out.append(t)
        return out

    seen = {}

    def answer(expected, n):
        def check(d):
            seen[n] = texts = messages(d, "bot")
            return len(texts) >= n and texts[n - 1] == visible(expected)
        return check

    shot = tmp_path / "demo.png"
    try:
        wait.until(answer(want, 1))
        # a second turn: the first one stays in the prompt (multi-turn)
        box = wait.until(lambda d: next((t for t in d.find_elements(By.CSS_SELECTOR, "#question textarea")
                                         if t.is_enabled()), None))
        box.send_keys(QUESTION2)
        box.send_keys(Keys.ENTER)
        try:
            wait.until(answer(want2, 2))
        except Exception:
            assert seen.get(2) == [visible(want), visible(want2)]
            raise
    finally:
        driver.save_screenshot(str(shot))
        print(f"\nscreenshot: {shot}")
        if os.environ.get("SLOTVLM_DEMO_SCREENSHOT"):
            shutil.copy(shot, os.environ["SLOTVLM_DEMO_SCREENSHOT"])
    assert messages(driver, "user") == [QUESTION, QUESTION2]
    assert os.path.getsize(shot) > 10_000
