# SPDX-License-Identifier: MPL-2.0
"""Several browser viewers of one i2iwhepsink: with `codec=h264` or `vp8` the video is encoded
once and the same frames go to every viewer (one encoder, whatever the number of viewers);
with `codec=per-viewer` each viewer gets its own encoder. Two headless Chromium viewers must
both decode frames, and the element's messages must count the encoders. A viewer whose offer
lacks the shared codec is refused with a 415 that names the property to change. GStreamer's own
WHEP client (`whepclientsrc`) must play the shared stream too, H264 included.
"""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from i2i_web_helpers import env, stop_process, wait_for
from webrtc_helpers import Pages, WebRtcPipeline, chrome, decoded, view

SOURCE = ("videotestsrc is-live=true pattern=ball ! "
          "video/x-raw,width=320,height=240,framerate=15/1")


def viewer_counts(messages):
    """(viewers, encoders) of each viewer-added message, in order."""
    return [(int(v), int(e)) for v, e in re.findall(
        r"event=\(string\)viewer-added, viewer=\(string\)[^,]+, viewers=\(gint64\)(\d+), "
        r"encoders=\(uint\)(\d+)", messages)]


def two_viewers(codec):
    tmp = tempfile.mkdtemp(prefix="i2i-whep-viewers-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, source=SOURCE, extra_sink=f"codec={codec}")
    browsers = []
    try:
        for i in range(2):
            browser = chrome(f"{tmp}/view{i}")
            browsers.append(browser)
            t = view(browser, pages, gst.whep)
            assert t["status"] == 201, (t, gst.messages()[-3000:])
        for browser in browsers:
            s = decoded(browser, what=f"decoded frames in both viewers: {gst.messages()[-2000:]}")
            assert (s["width"], s["height"]) == (320, 240), s
        assert gst.proc.poll() is None, gst.messages()[-3000:]
        return gst.messages()
    finally:
        for b in browsers:
            b.quit()
        gst.stop()
        pages.stop()


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_two_viewers_get_the_same_encoded_stream(codec):
    messages = two_viewers(codec)
    counts = viewer_counts(messages)
    assert [v for v, _ in counts][:2] == [1, 2], counts
    # One encoder for both viewers, none made per viewer.
    assert all(e == 1 for _, e in counts), counts
    assert "encoder-started" not in messages


def test_per_viewer_encoding_makes_one_encoder_per_viewer():
    messages = two_viewers("per-viewer")
    encoders = [int(n) for n in re.findall(
        r"event=\(string\)encoder-started, viewer=\(string\)[^,]+, viewers=\(gint64\)\d+, "
        r"encoders=\(uint\)(\d+)", messages)]
    assert encoders and max(encoders) == 2, messages[-3000:]


def test_a_viewer_without_the_shared_codec_is_told_what_to_change():
    tmp = tempfile.mkdtemp(prefix="i2i-whep-codec-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, source=SOURCE, extra_sink="codec=h264")
    browser = None
    try:
        browser = chrome(f"{tmp}/view")
        t = view(browser, pages, gst.whep, codec="vp8", retry=False)
        assert t["status"] == 415, t
        assert "H264" in t["error"] and "codec=vp8" in t["error"], t
        wait_for(lambda: "415 Unsupported Media Type" in gst.messages(), 30,
                 f"the refusal on the bus: {gst.messages()[-2000:]}")
        # The endpoint still serves a viewer that takes H264.
        t = view(browser, pages, gst.whep)
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        decoded(browser)
    finally:
        if browser is not None:
            browser.quit()
        gst.stop()
        pages.stop()


RENDERED = re.compile(r"rendered: (\d+), dropped: (\d+)")


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_a_gstreamer_whep_viewer_plays_the_shared_stream(codec):
    """`whepclientsrc` offers H264 at a fixed level 2.2 without level-asymmetry-allowed; the
    shared encoder's stream is level 3, and the sink must still answer with H264, not an
    inactive video."""
    tmp = tempfile.mkdtemp(prefix="i2i-whep-gst-")
    gst = WebRtcPipeline(tmp, source=SOURCE, extra_sink=f"codec={codec} local-addresses=127.0.0.1")
    log_path = os.path.join(tmp, "viewer.log")
    viewer = None
    try:
        with open(log_path, "w") as log:
            viewer = subprocess.Popen(
                [shutil.which("gst-launch-1.0"), "-v", "whepclientsrc",
                 f"signaller::whep-endpoint={gst.whep}", "!", "videoconvert", "!",
                 "fpsdisplaysink", "video-sink=fakesink", "text-overlay=false", "sync=false"],
                env=env(), stdout=log, stderr=subprocess.STDOUT)

            def rendered():
                with open(log_path) as f:
                    found = RENDERED.findall(f.read())
                return int(found[-1][0]) if found else 0

            # An offer made before the sink's first frames waits for them.
            try:
                wait_for(lambda: rendered() >= 30, 60, f"30 frames rendered by whepclientsrc ({codec})")
            except AssertionError as e:
                with open(log_path) as f:
                    raise AssertionError(f"{e}: {f.read()[-2000:]} {gst.messages()[-2000:]}") from None
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        if viewer is not None:
            stop_process(viewer)
        gst.stop()
