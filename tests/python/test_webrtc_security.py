# SPDX-License-Identifier: MPL-2.0
"""What a stranger who reaches the WHIP/WHEP ports can do, and what it costs.

- With `token` set, an offer without `Authorization: Bearer <token>` gets 401; a publisher
  with it (GStreamer's whipclientsink, `auth-token`) is served; its session resource takes no
  DELETE or PATCH without the token, and no one without it can replace the live publisher:
  its frames keep coming out.
- CORS answers only the origins in `allowed-origins`.
- A flood of WHEP offers that never connect (75 of them, 8 at a time) is held to
  `max-pending` sessions, each ended `connect-timeout` after its answer; the others get 503
  with Retry-After. The pipeline process's descriptors and threads stay bounded (read from
  /proc), it lives on, and a real viewer (headless Chromium) plays afterwards.
- Idle TCP connections are capped, and an offer's body must arrive in time.
"""

import concurrent.futures
import re
import socket
import tempfile
import threading
import time

from i2i_web_helpers import wait_for
from webrtc_helpers import (FrameCounter, Pages, Publisher, WebRtcPipeline, chrome, decoded,
                            fake_offer, fds, http, listening, threads, view, zmq_output)

TOKEN = "s3cret-token-for-tests"
PAGE = "http://page.example:8765"


def test_tokens_guard_offers_and_session_resources():
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-token-")
    zmq_sink, endpoint = zmq_output()
    access = f"token={TOKEN} allowed-origins={PAGE}"
    gst = WebRtcPipeline(
        tmp, middle="videoconvert", extra_src=access,
        sink=(f"tee name=t ! queue ! {zmq_sink} t. ! queue ! i2iwhepsink name=out "
              "host-addr=http://127.0.0.1:{whep_port} " + access))
    out = None
    publisher = None
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        out = FrameCounter(endpoint)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, text, h = http("POST", gst.whip, fake_offer(), headers=headers)
            assert status == 401, (headers, status, text)
            assert h.get("www-authenticate", "").startswith("Bearer"), h
        status, text, _ = http("POST", gst.whep, fake_offer(direction="recvonly"))
        assert status == 401 and "Authorization: Bearer" in text, (status, text)

        start = time.monotonic()
        publisher = Publisher(gst.whip, "vp8", token=TOKEN, log=f"{tmp}/publisher.log")
        out.wait(15, start, 90, f"the publisher with the token: {gst.messages()[-2000:]}")
        resource = re.search(r"event=\(string\)session-started, pad=\(string\)([0-9a-f-]+)",
                             gst.messages()).group(1)
        url = f"{gst.whip.rsplit('/', 1)[0]}/resource/{resource}"

        # The session is its creator's: no DELETE or PATCH without the token, no takeover.
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, text, _ = http("DELETE", url, headers=headers)
            assert status == 401, (status, text)
            status, text, _ = http("PATCH", url, "a=end-of-candidates", ctype="application/trickle-ice-sdpfrag",
                                   headers=headers)
            assert status == 401, (status, text)
        status, text, _ = http("PATCH", url, "a=end-of-candidates", ctype="application/trickle-ice-sdpfrag",
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 405, (status, text)
        status, text, _ = http("POST", gst.whip, fake_offer())
        assert status == 401, (status, text)
        after = time.monotonic()
        out.wait(15, after, 60, "the publisher after the attempts on its session")
        assert "session-ended" not in gst.messages(), gst.messages()[-2000:]

        # CORS for the listed origin only.
        _, _, h = http("OPTIONS", gst.whip, headers={"Origin": PAGE,
                                                     "Access-Control-Request-Method": "POST"})
        assert h.get("access-control-allow-origin") == PAGE, h
        assert "Authorization" in h.get("access-control-allow-headers", ""), h
        _, _, h = http("OPTIONS", gst.whep, headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in h, h

        # The creator's DELETE ends it.
        status, text, _ = http("DELETE", url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, (status, text)
        assert gst.proc.poll() is None, gst.messages()[-3000:]
    finally:
        if publisher is not None:
            publisher.stop()
        if out is not None:
            out.stop()
        gst.stop()


def test_unconnected_whep_offers_are_capped_and_timed_out():
    tmp = tempfile.mkdtemp(prefix="i2i-whep-flood-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, source=("videotestsrc is-live=true pattern=ball ! "
                                      "video/x-raw,width=320,height=240,framerate=15/1"))
    browser = None
    try:
        # Ready once frames flow (503 "no video" before); that offer's session times out too.
        wait_for(lambda: listening(gst.whep), 30, "the WHEP endpoint")
        wait_for(lambda: http("POST", gst.whep, fake_offer(direction="recvonly"))[0] == 201,
                 60, "the WHEP endpoint to take offers")
        pid = gst.proc.pid
        base_fds, base_threads = fds(pid), threads(pid)
        peak = {"fds": base_fds, "threads": base_threads}
        flooding = True

        def sample():
            while flooding:
                try:
                    peak["fds"] = max(peak["fds"], fds(pid))
                    peak["threads"] = max(peak["threads"], threads(pid))
                except OSError:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: http("POST", gst.whep, fake_offer(direction="recvonly")), range(75)))
        # The last sessions time out within connect-timeout (5 s) of their answers.
        time.sleep(7)
        flooding = False
        sampler.join()
        statuses = [a[0] for a in answers]
        print(f"flood: {statuses.count(201)} answered, {statuses.count(503)} refused 503; "
              f"descriptors {base_fds} -> peak {peak['fds']} -> {fds(pid)}; "
              f"threads {base_threads} -> peak {peak['threads']} -> {threads(pid)}")
        assert gst.proc.poll() is None, gst.messages()[-3000:]
        assert set(statuses) <= {201, 503}, statuses
        assert statuses.count(503) > 0 and statuses.count(201) > 0, statuses
        refused = next(a for a in answers if a[0] == 503)
        assert "max-pending" in refused[1] and refused[2].get("retry-after"), refused
        # Bounded: max-pending (4) sessions of ~15 descriptors and ~8 threads, plus the HTTP
        # connections; 75 unbounded offers reached 988 descriptors before the fix.
        assert peak["fds"] - base_fds < 150, peak
        assert peak["threads"] - base_threads < 80, peak
        assert "did not connect within 5000 ms" in gst.messages(), gst.messages()[-2000:]

        # A real viewer plays afterwards.
        browser = chrome(f"{tmp}/view")
        t = view(browser, pages, gst.whep)
        assert t["status"] == 201, (t, gst.messages()[-3000:])
        decoded(browser, what=f"frames in the viewer after the flood: {gst.messages()[-2000:]}")
        assert gst.proc.poll() is None
    finally:
        if browser is not None:
            browser.quit()
        gst.stop()
        pages.stop()


def test_idle_and_slow_http_clients_are_bounded():
    """Hundreds of connections that send nothing hold at most 64 of the process's descriptors
    (the rest wait in the kernel's accept queue); an offer whose body never finishes is
    answered 408 after 10 s; once the idle clients go, offers are answered again."""
    tmp = tempfile.mkdtemp(prefix="i2i-whip-idle-")
    gst = WebRtcPipeline(tmp, middle="videoconvert", sink="fakesink async=false")
    idle = []
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        pid = gst.proc.pid
        base = fds(pid)
        port = int(gst.whip.split(":")[2].split("/")[0])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /whip/endpoint HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                     b"Content-Length: 1000\r\n\r\nv=0\r\n")
        start = time.monotonic()
        for _ in range(300):
            # Past the cap and the kernel's accept queue, a connect waits for room: give up.
            s = socket.socket()
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                idle.append(s)
            else:
                s.close()
        time.sleep(2)
        held = fds(pid)
        print(f"{len(idle)} idle connections: descriptors {base} -> {held}")
        assert held - base < 64 + 20, (base, held)
        assert gst.proc.poll() is None, gst.messages()[-2000:]
        slow.settimeout(30)
        answer = slow.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 10000 ms" in answer, answer
        assert 8 < time.monotonic() - start < 30
        slow.close()
        for s in idle:
            s.close()
        idle.clear()
        status, text, _ = http("POST", gst.whip, fake_offer())
        assert status == 201, (status, text)
    finally:
        for s in idle:
            s.close()
        gst.stop()
