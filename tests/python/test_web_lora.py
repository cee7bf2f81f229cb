# SPDX-License-Identifier: MPL-2.0
"""The control room's LoRA control in a real browser (headless Chromium, selenium): a path
and a scale reach the settings holder as `lora=FILE:SCALE`, a typed list as it is, Off as
`lora=off`, a scale out of range is refused and shown, and a reload loads the holder's list
into the field. The holder and i2i-web are the real programs; what a transform does with
the list is tested in gst-plugin-i2i/tests (i2itransform_lora.rs, settings_e2e.rs)."""

import shutil
import tempfile

import pytest

from i2i_web_helpers import Holder, Web, wait_for
from test_web_browser import chrome, still_y4m

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402


def test_lora_control_reaches_the_holder():
    holder = Holder("/prompt a fox")
    web = Web(control=holder.control)
    tmp = tempfile.mkdtemp(prefix="i2i-web-lora-")
    browser = None
    try:
        y4m = f"{tmp}/still.y4m"
        still_y4m(y4m)
        browser = chrome(tmp, y4m)
        browser.get(web.http + "/")
        wait_for(lambda: browser.execute_script("return window.i2i && window.i2i.connected"),
                 20, "the page's WebSocket")

        def answered(part):
            return wait_for(lambda: any(part in a for a in browser.execute_script("return window.i2i.answers")),
                            10, f"the holder's answer with {part}")

        field = browser.find_element(By.ID, "lora")
        field.send_keys("/styles/ink.onnx_adapter")
        browser.execute_script(
            "const s = document.getElementById('lora-scale'); s.value = '0.8';"
            "s.dispatchEvent(new Event('input'));")
        assert browser.find_element(By.ID, "lora-scale-v").text == "0.8"
        browser.find_element(By.ID, "lora-on").click()
        answered("lora=/styles/ink.onnx_adapter:0.8")
        field.clear()
        field.send_keys("/styles/ink.onnx_adapter:0.5,/styles/oil.onnx_adapter:0.7")
        browser.find_element(By.ID, "lora-on").click()
        answered("lora=/styles/ink.onnx_adapter:0.5,/styles/oil.onnx_adapter:0.7")
        # The holder's list comes back into the field after a reload.
        browser.refresh()
        wait_for(lambda: browser.execute_script(
            "return window.i2i.connected && document.getElementById('lora').value"),
            20, "the holder's LoRA list loaded into the page")
        assert browser.find_element(By.ID, "lora").get_attribute("value") == \
            "/styles/ink.onnx_adapter:0.5,/styles/oil.onnx_adapter:0.7"
        browser.find_element(By.ID, "lora-off").click()
        answered("lora=off")
        # A scale out of range is refused, and the page says so.
        field = browser.find_element(By.ID, "lora")
        field.clear()
        field.send_keys("/styles/ink.onnx_adapter:99")
        browser.find_element(By.ID, "lora-on").click()
        wait_for(lambda: browser.execute_script("return window.i2i.errors.length") > 0, 10,
                 "the refusal of scale 99")
        assert "out of range" in browser.execute_script("return window.i2i.errors.join(' ')")
        assert "refused" in browser.find_element(By.ID, "status").text
    finally:
        if browser is not None:
            browser.quit()
        web.stop()
        holder.stop()
        shutil.rmtree(tmp, ignore_errors=True)
