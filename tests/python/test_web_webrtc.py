# SPDX-License-Identifier: MPL-2.0
"""The control room page (i2i-web) in its WebRTC mode, in headless Chromium with the fake
camera: opened with `?whip=...&whep=...`, Start publishes the camera over WHIP to
`i2iwhipsrc ! i2itransform model=models/demo ! i2iwhepsink`, and the page plays the
transformed output from WHEP in its output video (at the transform's size, so through the
transform), sending nothing over the WebSocket. With a WHIP endpoint that does not answer,
the page falls back to sending JPEG frames over the WebSocket. All on 127.0.0.1.
"""

import tempfile
from urllib.parse import quote

import pytest

from i2i_web_helpers import Web, free_port, wait_for
from webrtc_helpers import WebRtcPipeline, chrome

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

OUT_W, OUT_H = 256, 192

OUTPUT_STATS = """
const done = arguments[arguments.length - 1];
const pc = window.i2iWhepPc, v = document.getElementById('output-video');
if (!pc) return done(null);
pc.getStats().then(r => {
  let s = null;
  r.forEach(x => { if (x.type === 'inbound-rtp' && x.kind === 'video') s = x; });
  done({framesDecoded: s ? s.framesDecoded || 0 : 0, width: v.videoWidth, height: v.videoHeight,
        hidden: v.hidden, webrtc: window.i2i.webrtc, sent: window.i2i.sent});
});
"""


def page_url(web, whip, whep, token=None):
    url = f"{web.http}/?whip={quote(whip, safe='')}&whep={quote(whep, safe='')}"
    return url + (f"&webrtc-token={quote(token, safe='')}" if token else "")


@pytest.mark.parametrize("token", [None, "s3cret-token"], ids=["open", "bearer-token"])
def test_page_publishes_over_whip_and_plays_whep(token):
    tmp = tempfile.mkdtemp(prefix="i2i-web-webrtc-")
    # With a token on both endpoints, the page passes it (webrtc-token=) as a bearer token.
    tok = f'token="{token}"' if token else ""
    gst = WebRtcPipeline(tmp, OUT_W, OUT_H, extra_src=tok, extra_sink=tok)
    web = Web()
    browser = None
    try:
        browser = chrome(f"{tmp}/page")
        browser.get(page_url(web, gst.whip, gst.whep, token))
        browser.find_element(By.ID, "start").click()
        wait_for(lambda: browser.execute_script("return window.i2i.webrtc.whip") == "publishing",
                 60, lambda: f"the page's WHIP publisher (page: "
                 f"{browser.execute_script('return window.i2i.webrtc')}): {gst.messages()[-2000:]}")
        wait_for(lambda: "publisher-connected" in gst.messages(), 60,
                 f"i2iwhipsrc's publisher-connected: {gst.messages()[-2000:]}")
        s = wait_for(lambda: (lambda s: s if s and s["framesDecoded"] > 5 and s["width"] else None)(
            browser.execute_async_script(OUTPUT_STATS)), 120,
            f"the page's WHEP output: {gst.messages()[-2000:]}")
        assert s["webrtc"]["whep"] == "playing", s
        assert (s["width"], s["height"]) == (OUT_W, OUT_H), s
        assert not s["hidden"], s
        # The camera went over WebRTC only, not as JPEG frames over the WebSocket.
        assert s["sent"] == 0, s
        # The header shows the real rates: the WHEP video's frames, the WHIP sender's.
        numbers = wait_for(lambda: (lambda n: n if n["out"] > 1 and n["in"] > 1 else None)(
            browser.execute_script(
                "return {out: window.i2i.outFps, in: window.i2i.inFps,"
                " text: document.getElementById('numbers').innerText}")),
            30, "the header's WebRTC rates")
        fps = float(browser.find_element(By.ID, "fps").text)
        assert fps > 1, numbers
        assert "latency" not in numbers["text"], numbers  # not measured over WebRTC
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        if browser is not None:
            browser.quit()
        web.stop()
        gst.stop()


def test_page_falls_back_to_the_websocket_when_whip_fails():
    tmp = tempfile.mkdtemp(prefix="i2i-web-webrtc-fallback-")
    web = Web()
    browser = None
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        browser = chrome(f"{tmp}/page")
        browser.get(page_url(web, f"{dead}/whip/endpoint", f"{dead}/whep/endpoint"))
        browser.find_element(By.ID, "start").click()
        state = wait_for(lambda: browser.execute_script(
            "return window.i2i.webrtc.whip"), 60, "the WHIP attempt")
        assert state.startswith("failed"), state
        wait_for(lambda: browser.execute_script("return window.i2i.sent") > 3, 60,
                 "JPEG frames sent over the WebSocket instead")
    finally:
        if browser is not None:
            browser.quit()
        web.stop()
