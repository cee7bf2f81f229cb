# SPDX-License-Identifier: MPL-2.0
"""Bad and hostile input at the WHIP/WHEP endpoints of a running pipeline: each refusal is a
clear HTTP answer and a bus warning, and the pipeline keeps running and takes the next good
publisher (whose frames are counted at the output). Offers webrtcbin could not answer (no ICE
credentials, 300 m-lines) are refused before it sees them; a second offer with
busy-policy=refuse gets 409 at once; a publisher that leaves without DELETE (Chromium closed)
is noticed within a few seconds; `gst-launch-1.0 -e` with no publisher ends on SIGINT.
"""

import concurrent.futures
import signal
import subprocess
import tempfile
import time

from i2i_web_helpers import wait_for
from webrtc_helpers import (FrameCounter, Pages, Publisher, WebRtcPipeline, chrome, fake_offer,
                            http, listening, zmq_output)

# The offer of the attack: 9 lines, a video m-line, no ICE credentials, no fingerprint.
BARE = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
        "a=sendonly\r\na=mid:0\r\n")


def test_bad_requests_get_clear_answers_and_bus_warnings():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-bad-")
    gst = WebRtcPipeline(tmp, middle="videoconvert", extra_src="busy-policy=refuse")
    try:
        base = gst.whip.rsplit("/", 1)[0]
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")

        status, text, headers = http("POST", gst.whip, "this is not an SDP offer")
        assert status == 400 and "malformed SDP" in text, (status, text)
        # No CORS unless allowed-origins says so.
        assert "access-control-allow-origin" not in headers, headers

        audio = fake_offer(codec="opus").replace("m=video", "m=audio")
        status, text, _ = http("POST", gst.whip, audio)
        assert status == 400 and "no video" in text, (status, text)

        status, text, _ = http("POST", gst.whip, fake_offer(codec="AV1"))
        assert status == 415 and "AV1" in text and "H264" in text, (status, text)

        status, text, _ = http("POST", gst.whip, fake_offer(direction="recvonly"))
        assert status == 400 and "is recvonly" in text, (status, text)

        status, text, _ = http("POST", gst.whip, fake_offer(), ctype="text/plain")
        assert status == 415 and "application/sdp" in text, (status, text)

        status, text, _ = http("DELETE", f"{base}/resource/no-such-resource")
        assert status == 404 and "no-such-resource" in text, (status, text)

        status, text, _ = http("POST", gst.whep, "garbage")
        assert status == 400 and "malformed SDP" in text, (status, text)

        # Bus warnings, in the message itself; at most one a second per element, the rest counted.
        wait_for(lambda: "GstI2iWhipSrc:in: i2iwhipsrc: WHIP endpoint: 400 Bad Request: malformed SDP"
                 in gst.messages(), 10, f"the WHIP warning: {gst.messages()[-2000:]}")
        wait_for(lambda: "GstI2iWhepSink:out: i2iwhepsink: WHEP endpoint: 400 Bad Request: malformed SDP"
                 in gst.messages(), 10, "the WHEP warning")
        time.sleep(1.2)
        status, _, _ = http("POST", gst.whip, fake_offer(codec="H265"))
        assert status == 415
        wait_for(lambda: "more since the last report" in gst.messages(), 10,
                 f"the count of refusals not warned about: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        gst.stop()


def test_offers_webrtcbin_cannot_answer_are_refused_and_the_next_publisher_works():
    """The 9-line offer without ICE credentials and one with 300 m-lines used to end the
    pipeline (webrtcbin's create-answer failed); now they get 400 and a publisher follows."""
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-offers-")
    sink, endpoint = zmq_output()
    gst = WebRtcPipeline(tmp, middle="videoconvert", sink=sink)
    out = FrameCounter(endpoint)
    publisher = None
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        status, text, _ = http("POST", gst.whip, BARE)
        assert status == 400 and "no a=ice-ufrag" in text, (status, text)
        status, text, _ = http("POST", gst.whip, fake_offer(video_lines=300))
        assert status == 400 and "300 m-lines" in text, (status, text)
        bad_fingerprint = fake_offer().replace("sha-256", "sha-1")
        status, text, _ = http("POST", gst.whip, bad_fingerprint)
        assert status == 400 and "a=fingerprint" in text, (status, text)
        assert gst.proc.poll() is None, gst.messages()[-3000:]

        start = time.monotonic()
        publisher = Publisher(gst.whip, "vp8", log=f"{tmp}/publisher.log")
        out.wait(15, start, 90, f"the publisher after the bad offers: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        if publisher is not None:
            publisher.stop()
        out.stop()
        gst.stop()


def test_a_second_offer_with_busy_policy_refuse_gets_409_at_once():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-refuse-")
    gst = WebRtcPipeline(tmp, middle="videoconvert", extra_src="busy-policy=refuse")
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")

        def post():
            start = time.monotonic()
            status, text, _ = http("POST", gst.whip, fake_offer())
            return status, text, time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: post(), range(2)))
        statuses = sorted(r[0] for r in results)
        assert statuses == [201, 409], results
        refused = next(r for r in results if r[0] == 409)
        assert "busy-policy=refuse" in refused[1], refused
        # Answered at once, not after the 15 s answer timeout.
        assert refused[2] < 5, refused
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        gst.stop()


def test_publisher_vanishing_without_delete_is_noticed():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-vanish-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, middle="videoconvert",
                         extra_src="busy-policy=refuse publisher-timeout=3000")
    first = second = None
    try:
        first = chrome(f"{tmp}/first")
        first.get(pages.url)
        first.execute_script("window.publish(arguments[0]);", gst.whip)
        t = wait_for(lambda: first.execute_script(
            "return (window.t.status || window.t.error) ? window.t : null;"), 60, "WHIP answer")
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        wait_for(lambda: "publisher-connected" in gst.messages(), 60, "the first publisher")

        # While it is live, refuse=409.
        status, text, _ = http("POST", gst.whip, fake_offer())
        assert status == 409 and "publisher is live" in text, (status, text)

        first.quit()  # gone without DELETE
        first = None
        gone = time.monotonic()
        wait_for(lambda: "did not DELETE" in gst.messages(), 30,
                 f"the vanished publisher noticed: {gst.messages()[-2000:]}")
        assert time.monotonic() - gone < 30

        second = chrome(f"{tmp}/second")
        second.get(pages.url)
        second.execute_script("window.publish(arguments[0]);", gst.whip)
        t = wait_for(lambda: second.execute_script(
            "return (window.t.status || window.t.error) ? window.t : null;"), 60, "WHIP answer")
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        wait_for(lambda: gst.messages().count("publisher-connected") >= 2, 60,
                 "the second publisher's video")
        assert gst.proc.poll() is None
    finally:
        for b in (first, second):
            if b is not None:
                b.quit()
        gst.stop()
        pages.stop()


def test_whep_offer_before_any_frame_gets_503_with_retry_after():
    """No publisher, so no frame has reached i2iwhepsink: a viewer's offer waits (10 s) for
    the first frames, then is told to retry, and the pipeline keeps running."""
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-early-")
    gst = WebRtcPipeline(tmp, middle="videoconvert")
    try:
        wait_for(lambda: listening(gst.whep), 30, "the WHEP endpoint")
        status, text, headers = http("POST", gst.whep, fake_offer(direction="recvonly"))
        assert status == 503 and "no video has reached the WHEP endpoint" in text, (status, text)
        assert headers.get("retry-after") == "1", headers
        wait_for(lambda: "503 Service Unavailable" in gst.messages(), 10,
                 f"the WHEP warning: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        gst.stop()


def test_sigint_without_a_publisher_ends_the_pipeline():
    """gst-launch-1.0 -e: the EOS reaches a sink that never prerolled, and the run ends."""
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-sigint-")
    gst = WebRtcPipeline(tmp, middle="videoconvert", sink="fakesink", eos_on_shutdown=True)
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        gst.proc.send_signal(signal.SIGINT)
        try:
            rc = gst.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 20 s after SIGINT: {gst.messages()[-2000:]}")
        assert rc == 0, gst.messages()[-2000:]
        assert "Got EOS from element" in gst.messages()
    finally:
        gst.stop()

