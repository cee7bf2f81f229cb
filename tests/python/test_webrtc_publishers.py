# SPDX-License-Identifier: MPL-2.0
"""Publishers come and go on one running i2iwhipsrc, and every one of them reaches the output.

Three publishers (GStreamer's whipclientsink) in turn, each DELETEing its session when it
stops, then a fourth that a fifth replaces while it is live (busy-policy=replace): the frames
that come out of the pipeline are counted after each publisher started (and after the one
before it had gone), in VP8 and H264, with and without i2itransform in the chain. Before the
fix the second publisher connected and sent frames but none came out (webrtcsrc's flush at the
first session's end had left everything downstream flushing), and the third was refused.
"""

import re
import tempfile
import time

import pytest

from i2i_web_helpers import wait_for
from webrtc_helpers import (FrameCounter, Publisher, WebRtcPipeline, listening, transform_chain,
                            zmq_output)

FRAMES = 15


def ended(gst):
    return len(re.findall(r"event=\(string\)session-ended", gst.messages()))


@pytest.mark.parametrize("chain", ["plain", "transform"])
@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_every_publisher_reaches_the_output(codec, chain):
    tmp = tempfile.mkdtemp(prefix=f"i2i-whip-turns-{codec}-{chain}-")
    middle = transform_chain(128, 96) if chain == "transform" else "videoconvert"
    sink, endpoint = zmq_output()
    gst = WebRtcPipeline(tmp, middle=middle, sink=sink)
    out = FrameCounter(endpoint)
    publishers = []

    def publish(i):
        publisher = Publisher(gst.whip, codec, log=f"{tmp}/publisher{i}.log")
        publishers.append(publisher)
        return publisher

    counts = []
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        for i in range(3):
            start = time.monotonic()
            publisher = publish(i)
            counts.append(out.wait(FRAMES, start, 90, f"publisher {i + 1} of 3: "
                                                      f"{gst.messages()[-1500:]}"))
            publisher.stop()  # DELETE
            wait_for(lambda: ended(gst) == i + 1, 30, f"publisher {i + 1}'s session end")
            out.quiet()

        # A live publisher replaced by a new one (an OBS reconnect, a page reload).
        start = time.monotonic()
        live = publish(3)
        counts.append(out.wait(FRAMES, start, 90, "the live publisher"))
        publish(4)
        wait_for(lambda: ended(gst) == 4, 60, "the live publisher replaced")
        replaced = time.monotonic()
        counts.append(out.wait(FRAMES, replaced, 90, f"the replacing publisher: "
                                                     f"{gst.messages()[-1500:]}"))
        live.stop()
        assert gst.proc.poll() is None, gst.messages()[-3000:]
        assert "CRITICAL" not in gst.messages(), gst.messages()[-3000:]
        print(f"{codec} {chain}: frames per publisher {counts}")
    finally:
        for p in publishers:
            p.stop()
        out.stop()
        gst.stop()
