# SPDX-License-Identifier: MPL-2.0
"""WHIP in and WHEP out with real browsers: headless Chromium's fake camera publishes over
WHIP to `i2iwhipsrc ! i2itransform model=models/demo ! i2iwhepsink`, and a second Chromium
page plays the WHEP output, reporting decoded frames at the transform's output size (not the
camera's), so the frames went through the transform. All on 127.0.0.1.
"""

import tempfile

import pytest

from i2i_web_helpers import stop_process, wait_for
from webrtc_helpers import Pages, WebRtcPipeline, chrome, publish, stats, view

# The transform's output size, unlike the camera's 320 x 240: a viewer seeing this size sees
# the transformed video.
OUT_W, OUT_H = 256, 192


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_whip_publisher_to_transform_to_whep_viewer(codec):
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, OUT_W, OUT_H)
    publisher = viewer = None
    try:
        publisher = chrome(f"{tmp}/pub")
        t = publish(publisher, pages, gst.whip, codec)
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        assert t["location"] and "/whip/resource/" in t["location"], t
        wait_for(lambda: "publisher-connected" in gst.messages(), 60,
                 f"i2iwhipsrc's publisher-connected message: {gst.messages()[-2000:]}")
        wait_for(lambda: (stats(publisher, "outbound-rtp") or {}).get("framesSent", 0) > 10, 60,
                 "frames sent by the publisher")

        viewer = chrome(f"{tmp}/view")
        t = view(viewer, pages, gst.whep)
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        s = wait_for(lambda: (lambda s: s if s and s["framesDecoded"] > 5 else None)(
            stats(viewer, "inbound-rtp")), 90, f"decoded frames in the viewer: {gst.messages()[-2000:]}")
        assert (s["width"], s["height"]) == (OUT_W, OUT_H), s
        assert "viewer-added" in gst.messages()
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        for b in (publisher, viewer):
            if b is not None:
                b.quit()
        gst.stop()
        pages.stop()


def test_gstreamer_whipclientsink_publishes_to_a_browser_viewer():
    """GStreamer's own WHIP client (whipclientsink on webrtcbin) as the publisher."""
    import shutil
    import subprocess

    from i2i_web_helpers import env

    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-gst-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, OUT_W, OUT_H)
    publisher = viewer = None
    try:
        publisher = subprocess.Popen(
            [shutil.which("gst-launch-1.0"), "videotestsrc", "is-live=true", "pattern=ball", "!",
             "video/x-raw,width=320,height=240,framerate=15/1", "!", "videoconvert", "!",
             "whipclientsink", f"signaller::whip-endpoint={gst.whip}"],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: "publisher-connected" in gst.messages(), 60,
                 f"whipclientsink's video: {gst.messages()[-2000:]}")
        viewer = chrome(f"{tmp}/view")
        t = view(viewer, pages, gst.whep)
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        s = wait_for(lambda: (lambda s: s if s and s["framesDecoded"] > 5 else None)(
            stats(viewer, "inbound-rtp")), 90, "decoded frames in the viewer")
        assert (s["width"], s["height"]) == (OUT_W, OUT_H), s
    finally:
        if publisher is not None:
            stop_process(publisher)
        if viewer is not None:
            viewer.quit()
        gst.stop()
        pages.stop()
