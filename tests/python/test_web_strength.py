# SPDX-License-Identifier: MPL-2.0
"""The control room's Strength slider in a real browser (headless Chromium, as in
test_web_browser.py): it shows the holder's strength, moving it right makes the change
stronger, and a multi-step t-index list stays a list (moved as a whole, spacing kept).
The keys a person would press on the slider (End, Home, arrows) drive it; the holder's
state is read back with `i2i-prompt --endpoint ... /status`."""

import json
import os
import shutil
import subprocess
import tempfile

from i2i_web_helpers import Holder, Web, binary, env, wait_for
from test_web_browser import chrome, still_y4m  # skips without chromium / selenium

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def holder_state(holder):
    out = subprocess.run([binary("i2i-prompt"), "--endpoint", holder.control, "/status"],
                         env=env(), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout[out.stdout.index("{"):])


def test_strength_slider_moves_right_for_a_stronger_change():
    holder = Holder("/t 22,32")
    web = Web(control=holder.control)
    tmp = tempfile.mkdtemp(prefix="i2i-web-strength-")
    y4m = os.path.join(tmp, "still.y4m")
    still_y4m(y4m)
    browser = None
    try:
        browser = chrome(tmp, y4m)
        browser.get(web.http + "/")
        wait_for(lambda: browser.execute_script("return window.i2i && window.i2i.connected"),
                 20, "the page's WebSocket")
        slider = browser.find_element(By.ID, "strength")
        # 22,32 with 50 steps: 22 of the 39 places it can start at, strength 1 - 22/39.
        wait_for(lambda: abs(float(slider.get_attribute("value")) - 0.436) < 0.01, 10,
                 "the holder's strength on the slider")

        def answered(part):
            return wait_for(lambda: any(part in a for a in browser.execute_script("return window.i2i.answers")),
                            10, f"the holder's answer with {part}")

        # Right end: the strongest change, the list moved as a whole.
        slider.send_keys(Keys.END)
        answered("t-index-list=0,10")
        assert holder_state(holder)["t-index-list"] == "0,10"
        # Left end: the weakest.
        slider.send_keys(Keys.HOME)
        answered("t-index-list=39,49")
        weakest = holder_state(holder)
        assert weakest["t-index-list"] == "39,49"
        assert weakest["strength"] == 0
        # Ten steps right (0.1) is stronger again: a lower first t-index.
        slider.send_keys(*[Keys.ARROW_RIGHT] * 10)
        state = wait_for(lambda: (s := holder_state(holder))["t-index-list"] == "35,45" and s, 10,
                         "the list after ten steps right")
        first = [int(t) for t in state["t-index-list"].split(",")]
        assert first[1] - first[0] == 10, state
        assert browser.execute_script("return window.i2i.errors.length") == 0
    finally:
        if browser is not None:
            browser.quit()
        web.stop()
        holder.stop()
        shutil.rmtree(tmp, ignore_errors=True)
