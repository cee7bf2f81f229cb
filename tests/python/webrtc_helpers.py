# SPDX-License-Identifier: MPL-2.0
"""WHIP/WHEP test helpers: the WebRTC pipeline (gst-launch-1.0 with i2iwhipsrc and
i2iwhepsink on ephemeral ports of 127.0.0.1), the publisher and viewer pages served from
127.0.0.1, headless Chromium set up to use its fake camera and loopback ICE candidates,
GStreamer's own WHIP client (whipclientsink) as a publisher, with or without audio, and a
counter of the frames that reach the pipeline's output (ZeroMQ).

The pages are plain RTCPeerConnection + fetch, as a browser publisher or viewer would be.
"""

from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from i2i_web_helpers import ROOT, env, free_port, stop_process, wait_for

webdriver = pytest.importorskip("selenium.webdriver")

PAGE = """<!doctype html><html><body><video id="v" autoplay muted playsinline></video>
<script>
window.t = {status: null, location: null, error: null, stats: null};
function gathered(pc) {
  return new Promise(r => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') r();
    });
    setTimeout(r, 3000);
  });
}
async function post(url, pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const res = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                body: pc.localDescription.sdp});
  // The status last: the test reads the result once it is set, error text included.
  const text = await res.text();
  window.t.location = res.headers.get('Location');
  if (res.status !== 201) window.t.error = text;
  window.t.status = res.status;
  if (res.status !== 201) return;
  await pc.setRemoteDescription({type: 'answer', sdp: text});
}
window.publish = async (url, codec) => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
    const pc = new RTCPeerConnection();
    window.pc = pc;
    const tr = pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly'});
    if (codec) {
      const caps = RTCRtpSender.getCapabilities('video').codecs
        .filter(c => c.mimeType.toLowerCase() === 'video/' + codec);
      tr.setCodecPreferences(caps);
    }
    await post(url, pc);
  } catch (e) { window.t.error = String(e); }
};
window.view = async (url, codec) => {
  try {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    const tr = pc.addTransceiver('video', {direction: 'recvonly'});
    if (codec) {
      tr.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs
        .filter(c => c.mimeType.toLowerCase() === 'video/' + codec));
    }
    pc.ontrack = e => { document.getElementById('v').srcObject = new MediaStream([e.track]); };
    await post(url, pc);
  } catch (e) { window.t.error = String(e); }
};
window.stats = async (kind) => {
  if (!window.pc) return null;
  const report = await window.pc.getStats();
  let out = null;
  report.forEach(s => { if (s.type === kind && s.kind === 'video') out = {
    framesDecoded: s.framesDecoded || 0, framesSent: s.framesSent || 0,
    width: s.frameWidth || 0, height: s.frameHeight || 0}; });
  return out;
};
</script></body></html>
"""


class Pages:
    """The publisher/viewer page over HTTP on 127.0.0.1 (a secure context for getUserMedia)."""

    def __init__(self, directory):
        Path(directory, "index.html").write_text(PAGE)

        class Quiet(SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=directory, **k)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/index.html"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def chrome(tmp, y4m=None):
    """Headless Chromium: fake camera, loopback ICE candidates, no mDNS host names.

    The test pages come from another origin than the WHIP/WHEP endpoints, which allow no
    origin unless `allowed-origins` names it (test_webrtc_security.py checks that), so the
    browser runs with web security off.
    """
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium / chromium-driver not installed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp}", "--window-size=800,600",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection", "--disable-web-security",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if y4m:
        args.append(f"--use-file-for-fake-video-capture={y4m}")
    for a in args:
        opts.add_argument(a)
    service = webdriver.ChromeService(executable_path=driver)
    browser = webdriver.Chrome(options=opts, service=service)
    browser.set_script_timeout(30)
    return browser


class WebRtcPipeline:
    """`i2iwhipsrc ! ... ! i2itransform model=models/demo ! ... ! i2iwhepsink` in gst-launch-1.0,
    its bus messages (-m) in a file."""

    def __init__(self, tmp, width=256, height=192, middle=None, extra_src="", extra_sink="",
                 source=None, sink=None, eos_on_shutdown=False):
        """`source`: a gst-launch source chain in place of `i2iwhipsrc ! middle` (WHEP only);
        `sink`: one in place of `i2iwhepsink` (WHIP only; `{whep_port}` in it is the WHEP
        port); `eos_on_shutdown`: gst-launch-1.0
        -e, SIGINT ends the stream with EOS."""
        launch = shutil.which("gst-launch-1.0")
        if launch is None:
            pytest.skip("gst-launch-1.0 not installed (apt install gstreamer1.0-tools)")
        model = ROOT / "models" / "demo"
        if not model.exists():
            pytest.skip(f"{model} missing (python scripts/make_models.py --out models)")
        self.whip_port = free_port()
        self.whep_port = free_port()
        self.whip = f"http://127.0.0.1:{self.whip_port}/whip/endpoint"
        self.whep = f"http://127.0.0.1:{self.whep_port}/whep/endpoint"
        if middle is None:
            middle = (f"videoconvert ! i2itransform model={model} width={width} height={height} "
                      f"! videoconvert")
        if source is None:
            source = (f"i2iwhipsrc name=in host-addr=http://127.0.0.1:{self.whip_port} "
                      f"{extra_src} ! {middle}")
        if sink is None:
            sink = "i2iwhepsink name=out host-addr=http://127.0.0.1:{whep_port} " + extra_sink
        sink = sink.replace("{whep_port}", str(self.whep_port))
        desc = f"{source} ! {sink}"
        self.log_path = os.path.join(tmp, "gst-launch.log")
        self.log = open(self.log_path, "w")
        flags = ["-m", "-e"] if eos_on_shutdown else ["-m"]
        self.proc = subprocess.Popen([launch, *flags, *desc.split()], env=env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)

    def messages(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def stats(browser, kind):
    """The page's first video `inbound-rtp` / `outbound-rtp` stats (frames, size), or None."""
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; window.stats(arguments[0]).then(done);",
        kind)


def publish(browser, pages, url, codec=None):
    """Publishes the fake camera over WHIP; the page's result {status, location, error}."""
    browser.get(pages.url)
    browser.execute_script("window.publish(arguments[0], arguments[1]);", url, codec)
    return wait_for(lambda: browser.execute_script(
        "return (window.t.status || window.t.error) ? window.t : null;"), 60, "the WHIP answer")


def view(browser, pages, url, codec=None, retry=True):
    """Plays the WHEP output; POSTs again (while `retry`) until the endpoint answers 201: it
    does once frames flow into i2iwhepsink (503 before that)."""
    deadline = time.monotonic() + 60
    while True:
        browser.get(pages.url)
        browser.execute_script("window.view(arguments[0], arguments[1]);", url, codec)
        t = wait_for(lambda: browser.execute_script(
            "return (window.t.status || window.t.error) ? window.t : null;"), 60, "the WHEP answer")
        if t["status"] == 201 or not retry or time.monotonic() > deadline:
            return t
        time.sleep(1)


def decoded(browser, frames=5, timeout=90, what="decoded frames in the viewer"):
    """Waits until the viewer page has decoded more than `frames` frames; their stats."""
    return wait_for(lambda: (lambda s: s if s and s["framesDecoded"] > frames else None)(
        stats(browser, "inbound-rtp")), timeout, what)


def http(method, url, body=None, ctype="application/sdp", headers=None, timeout=30):
    """One HTTP request: (status, body text, headers with lower-case names)."""
    req = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                 method=method)
    if body is not None and ctype:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def listening(url):
    """True once the endpoint answers HTTP (any status)."""
    try:
        return http("OPTIONS", url, timeout=2)[0] > 0
    except OSError:
        return False


class Publisher:
    """GStreamer's WHIP client (whipclientsink) publishing a moving test picture, and with
    `audio` a tone too (as OBS does). `stop()` ends it as a user would (SIGINT: -e sends EOS,
    and whipclientsink DELETEs its session)."""

    def __init__(self, url, codec="vp8", size=(320, 240), fps=15, audio=False, token=None,
                 log=None, frames=None):
        """`frames`: send that many video frames, then end (EOS, DELETE) by itself."""
        w, h = size
        caps = "video/x-h264" if codec == "h264" else "video/x-vp8"
        count = [f"num-buffers={frames}"] if frames else []
        args = ["gst-launch-1.0", "-e",
                "videotestsrc", "is-live=true", "pattern=ball", *count, "!",
                f"video/x-raw,width={w},height={h},framerate={fps}/1", "!", "videoconvert", "!",
                "whipclientsink", "name=ws", f"video-caps={caps}",
                f"signaller::whip-endpoint={url}"]
        if token:
            args.append(f"signaller::auth-token={token}")
        if audio:
            args += ["audiotestsrc", "is-live=true", "wave=sine", "!", "audioconvert", "!",
                     "audioresample", "!", "ws."]
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=env(), stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        stop_process(self.proc)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def transform_chain(width, height):
    """The middle of a WHIP pipeline with the demo model: raw video in and out."""
    model = ROOT / "models" / "demo"
    return f"videoconvert ! i2itransform model={model} width={width} height={height} ! videoconvert"


def zmq_output():
    """(gst-launch sink chain, its endpoint): the pipeline's frames as JPEG over ZeroMQ."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    return f"jpegenc ! zmqmsgpacksink endpoint={endpoint} sync=false", endpoint


class FrameCounter:
    """Subscribes to a zmqmsgpacksink and notes when each frame arrives."""

    def __init__(self, endpoint):
        zmq = pytest.importorskip("zmq")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        self.sock.connect(endpoint)
        self.times = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import zmq
        while self.running:
            try:
                self.sock.recv()
            except zmq.Again:
                continue
            self.times.append(time.monotonic())

    def since(self, t):
        return sum(1 for x in list(self.times) if x >= t)

    def wait(self, frames, since, timeout, what):
        """Waits until `frames` frames arrived after `since`; their count."""
        return wait_for(lambda: self.since(since) >= frames and self.since(since),
                        timeout, f"{frames} frames at the output from {what} "
                                 f"(got {self.since(since)})")

    def quiet(self, gap=0.5, timeout=20):
        """Waits until no frame has come for `gap` seconds (the pipeline drained)."""
        wait_for(lambda: not self.times or time.monotonic() - self.times[-1] > gap, timeout,
                 "the output to go quiet")

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close(0)
        self.ctx.term()


def fake_offer(direction="sendonly", codec="VP8", video_lines=1, transport=True):
    """An SDP offer as a browser would send it (random ICE credentials and DTLS fingerprint,
    no candidates), with `video_lines` video m-lines; `transport=False` leaves out the ICE
    and DTLS lines. A peer that sends it never connects."""
    lines = ["v=0", f"o=- {secrets.randbelow(10**9)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if transport:
        fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
        lines += [f"a=ice-ufrag:{secrets.token_hex(4)}", f"a=ice-pwd:{secrets.token_hex(12)}",
                  f"a=fingerprint:sha-256 {fingerprint}"]
    lines.append("a=group:BUNDLE " + " ".join(str(i) for i in range(video_lines)))
    for i in range(video_lines):
        lines += ["m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", f"a=mid:{i}",
                  "a=rtcp-mux", f"a=rtpmap:96 {codec}/90000", f"a={direction}"]
        if transport:
            lines.append("a=setup:actpass")
    return "\r\n".join(lines) + "\r\n"


def fds(pid):
    """Open file descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid):
    """Threads of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
