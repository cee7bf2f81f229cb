# SPDX-License-Identifier: MPL-2.0
"""Bad input at the WHIP/WHEP endpoints of a running pipeline: each refusal is a clear HTTP
answer and a bus warning, and the pipeline keeps running and takes the next good publisher.
A publisher that leaves without DELETE (Chromium closed) is noticed within a few seconds.
"""

import tempfile
import time
import urllib.error
import urllib.request

from i2i_web_helpers import wait_for
from webrtc_helpers import Pages, WebRtcPipeline, chrome

OFFER = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
         "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
         "a=rtpmap:96 {codec}/90000\r\na=sendonly\r\n")


def http(method, url, body=None, ctype="application/sdp"):
    req = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                 method=method)
    if body is not None and ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def test_bad_requests_get_clear_answers_and_bus_warnings():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-bad-")
    gst = WebRtcPipeline(tmp, middle="videoconvert", extra_src="busy-policy=refuse")
    try:
        base = gst.whip.rsplit("/", 1)[0]
        wait_for(lambda: _listening(gst.whip), 30, "the WHIP endpoint")

        status, text, headers = http("POST", gst.whip, "this is not an SDP offer")
        assert status == 400 and "malformed SDP" in text, (status, text)
        assert headers.get("access-control-allow-origin") == "*"

        audio = OFFER.format(codec="opus").replace("m=video", "m=audio")
        status, text, _ = http("POST", gst.whip, audio)
        assert status == 400 and "no video" in text, (status, text)

        status, text, _ = http("POST", gst.whip, OFFER.format(codec="AV1"))
        assert status == 415 and "AV1" in text and "H264" in text, (status, text)

        status, text, _ = http("POST", gst.whip, OFFER.format(codec="VP8"), ctype="text/plain")
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
        status, _, _ = http("POST", gst.whip, OFFER.format(codec="H265"))
        assert status == 415
        wait_for(lambda: "more refused in the last second" in gst.messages(), 10,
                 f"the count of refusals not warned about: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        gst.stop()


def _listening(url):
    try:
        status, _, _ = http("OPTIONS", url)
        return status == 204
    except OSError:
        return False


def test_publisher_vanishing_without_delete_is_noticed():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-vanish-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, middle="videoconvert",
                         extra_src="busy-policy=refuse publisher-timeout=3")
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
        status, text, _ = http("POST", gst.whip, OFFER.format(codec="VP8"))
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
        wait_for(lambda: _listening(gst.whep), 30, "the WHEP endpoint")
        offer = OFFER.format(codec="VP8").replace("a=sendonly", "a=recvonly")
        status, text, headers = http("POST", gst.whep, offer)
        assert status == 503 and "no video has reached the WHEP endpoint" in text, (status, text)
        assert headers.get("retry-after") == "1", headers
        wait_for(lambda: "503 Service Unavailable" in gst.messages(), 10,
                 f"the WHEP warning: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        gst.stop()
