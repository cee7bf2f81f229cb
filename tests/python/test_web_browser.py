# SPDX-License-Identifier: MPL-2.0
"""The control room page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) with Chromium's fake camera.

The fake camera plays a still picture (a Y4M file written here), so frames made with the
same settings are alike and a change of prompt shows as a change of colour: the page
starts the camera, its frames go through i2i-web and a real
`settingssrc ! i2i.settings zmqmsgpacksrc ! jpegdec ! i2itransform model=models/demo !
zmqmsgpacksink` pipeline, the transformed frames are shown (checked from the page and on a
screenshot), and a prompt typed into the page changes them. With I2I_WEB_SCREENSHOT=PATH
the screenshot is also written to PATH (the README's docs/img/control-room.png).
"""

import base64
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from i2i_web_helpers import Holder, Web, pipeline, stop_process, wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

SIZE = 320


def still_y4m(path):
    """A 320 x 320 still (stripes and a gradient) as Y4M, 4:2:0, for the fake camera."""
    img = Image.new("RGB", (SIZE, SIZE))
    px = img.load()
    for y in range(SIZE):
        for x in range(SIZE):
            stripe = 220 if (x // 20) % 2 else 60
            px[x, y] = (stripe, (x + y) * 255 // (2 * SIZE), 255 - y * 255 // SIZE)
    ycc = img.convert("YCbCr")
    yp, cb, cr = ycc.split()
    half = (SIZE // 2, SIZE // 2)
    frame = yp.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{SIZE} H{SIZE} F15:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(2):
            f.write(b"FRAME\n" + frame)


def chrome(tmp, y4m):
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium / chromium-driver not installed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp}/profile", "--window-size=1280,900",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]:
        opts.add_argument(a)
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=opts, service=service)


OUTPUT_COLOUR = """
const img = document.getElementById('output');
if (!img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = 64; c.height = 64;
const g = c.getContext('2d'); g.drawImage(img, 0, 0, 64, 64);
const d = g.getImageData(0, 0, 64, 64).data;
let r = 0, gr = 0, b = 0;
for (let i = 0; i < d.length; i += 4) { r += d[i]; gr += d[i + 1]; b += d[i + 2]; }
const n = d.length / 4;
return [r / n, gr / n, b / n, window.i2i.shown];
"""


def test_control_room_in_headless_chromium():
    holder = Holder("/prompt monochrome")
    web = Web(control=holder.control)
    gst = pipeline(web, holder)
    tmp = tempfile.mkdtemp(prefix="i2i-web-chromium-")
    y4m = os.path.join(tmp, "still.y4m")
    still_y4m(y4m)
    browser = None
    try:
        browser = chrome(tmp, y4m)
        browser.set_script_timeout(10)
        browser.get(web.http + "/")
        wait_for(lambda: browser.execute_script("return window.i2i && window.i2i.connected"),
                 20, "the page's WebSocket")
        # The page loads the holder's state into its controls.
        wait_for(lambda: browser.find_element(By.ID, "prompt").get_attribute("value") == "monochrome",
                 10, "the holder's prompt in the page")
        browser.find_element(By.ID, "sendfps").send_keys("10")
        browser.find_element(By.ID, "start").click()
        wait_for(lambda: browser.execute_script("return window.i2i.shown") >= 10, 60,
                 "10 transformed frames shown in the page")
        assert browser.execute_script("return window.i2i.sent") >= 10
        before = wait_for(lambda: browser.execute_script(OUTPUT_COLOUR), 10, "the output image")
        time.sleep(1.0)
        again = browser.execute_script(OUTPUT_COLOUR)
        assert again[3] > before[3], "the output stopped"
        # Same still input and settings: about the same picture (monochrome: grey).
        steady = max(abs(a - b) for a, b in zip(before[:3], again[:3]))
        assert steady < 6, (before, again)
        assert abs(before[0] - before[1]) < 12, f"monochrome output should be grey: {before}"
        assert browser.execute_script("return window.i2i.latencyMs") is not None
        assert browser.execute_script("return window.i2i.errors.length") == 0

        # Type a prompt, as an operator would.
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("red fire lava", Keys.ENTER)
        wait_for(lambda: any("red fire lava" in a for a in browser.execute_script("return window.i2i.answers")),
                 10, "the holder's answer to the typed prompt")
        shown = before[3]

        def red():
            c = browser.execute_script(OUTPUT_COLOUR)
            return c if c and c[3] > shown + 5 and c[0] - c[1] > 25 else None

        after = wait_for(red, 30, "red frames after the typed prompt")
        assert after[0] - before[0] > 15, (before, after)

        # Screenshot: the output area is the transformed, red picture.
        png = browser.get_screenshot_as_png()
        shot = Image.open(io.BytesIO(png)).convert("RGB")
        out = browser.find_element(By.ID, "output")
        loc, size = out.location, out.size
        region = shot.crop((loc["x"], loc["y"], loc["x"] + size["width"], loc["y"] + size["height"]))
        r, g, b = ImageStat.Stat(region).mean
        assert r - g > 15, f"the screenshot's output area is not the red picture: {(r, g, b)}"
        target = os.environ.get("I2I_WEB_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_bytes(png)
        text = browser.find_element(By.ID, "numbers").text
        assert "fps" in text and "latency" in text

        # The other controls reach the holder too, with the holder's answers shown.
        def answered(part):
            return wait_for(lambda: any(part in a for a in browser.execute_script("return window.i2i.answers")),
                            10, f"the holder's answer with {part}")

        browser.find_element(By.ID, "newseed").click()
        seed = browser.find_element(By.ID, "seed").get_attribute("value")
        answered(f"seed={seed}")
        browser.execute_script(
            "const g = document.getElementById('guidance'); g.value = '1.5';"
            "g.dispatchEvent(new Event('change'));")
        answered("guidance-scale=1.5")
        browser.find_element(By.ID, "blend-b").send_keys("blue ocean")
        browser.find_element(By.ID, "blend-on").click()
        answered('prompt-blend=["red fire lava":0.5 "blue ocean":0.5]')
        browser.find_element(By.ID, "blend-off").click()
        answered("prompt-blend=off")
        # The guidance mode: with the default (self) the negative prompt does nothing and
        # is not shown; with full it is, and it reaches the holder; the choice survives a
        # reload (loaded from the holder); with none it is hidden again.
        negative = browser.find_element(By.ID, "negative")
        assert browser.find_element(By.ID, "cfg").get_attribute("value") == "self"
        assert not negative.is_displayed()
        Select(browser.find_element(By.ID, "cfg")).select_by_value("full")
        answered("cfg-type=full")
        assert negative.is_displayed()
        negative.send_keys("blurry, dark", Keys.TAB)
        answered('negative-prompt="blurry, dark"')
        browser.refresh()
        wait_for(lambda: browser.execute_script(
            "return window.i2i.connected && document.getElementById('cfg').value === 'full'"),
            20, "the holder's guidance mode loaded into the page")
        negative = browser.find_element(By.ID, "negative")
        assert negative.is_displayed() and negative.get_attribute("value") == "blurry, dark"
        Select(browser.find_element(By.ID, "cfg")).select_by_value("none")
        answered("cfg-type=none")
        assert not negative.is_displayed()

        # The style picture and its scale (IP-Adapter) reach the holder.
        browser.find_element(By.ID, "style").send_keys("styles/van-gogh.png", Keys.ENTER)
        answered('ip-adapter-image="styles/van-gogh.png"')
        browser.execute_script(
            "const s = document.getElementById('ipscale'); s.value = '0.5';"
            "s.dispatchEvent(new Event('change'));")
        answered("ip-adapter-scale=0.5")
        browser.find_element(By.ID, "style-off").click()
        answered('ip-adapter-image=""')

        # A value the holder refuses is shown as refused.
        browser.execute_script(
            "const t = document.getElementById('transition'); t.value = '99999';"
            "t.dispatchEvent(new Event('change'));")
        wait_for(lambda: browser.execute_script("return window.i2i.errors.length") > 0, 10,
                 "the refusal of transition 99999")
        assert "refused" in browser.find_element(By.ID, "status").text
    finally:
        if browser is not None:
            browser.quit()
        stop_process(gst)
        web.stop()
        holder.stop()
        shutil.rmtree(tmp, ignore_errors=True)
