# SPDX-License-Identifier: MPL-2.0
"""WHIP/WHEP test helpers: the WebRTC pipeline (gst-launch-1.0 with i2iwhipsrc and
i2iwhepsink on ephemeral ports of 127.0.0.1), the publisher and viewer pages served from
127.0.0.1, and headless Chromium set up to use its fake camera and loopback ICE candidates.

The pages are plain RTCPeerConnection + fetch, as a browser publisher or viewer would be.
"""

import http.server
import os
import shutil
import subprocess
import threading
import time
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

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=directory, **k)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/index.html"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def chrome(tmp, y4m=None):
    """Headless Chromium: fake camera, loopback ICE candidates, no mDNS host names.

    The WHIP/WHEP endpoints do not answer CORS preflights, so the test pages (another
    origin) run with web security off; the control room page proxies them same-origin.
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
                 source=None):
        """`source`: a gst-launch source chain in place of `i2iwhipsrc ! middle` (WHEP only)."""
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
        desc = (f"{source} ! i2iwhepsink name=out host-addr=http://127.0.0.1:{self.whep_port} "
                f"{extra_sink}")
        self.log_path = os.path.join(tmp, "gst-launch.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([launch, "-m", *desc.split()], env=env(), stdout=self.log,
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
