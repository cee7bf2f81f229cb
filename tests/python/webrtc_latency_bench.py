#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Camera-to-viewer latency through WHIP -> i2itransform (demo model) -> WHEP, one machine.

The "camera" is a canvas in headless Chromium that draws a frame counter as a 4 x 4 grid of
black and white 128-pixel blocks (14 bits of counter and two fixed check blocks, which survive
the demo model's posterising and the codecs) and publishes it over WHIP; a second Chromium
plays the WHEP output, reads the counter back from each decoded frame
(requestVideoFrameCallback) and the latency is the viewer's wall clock minus the publisher's
when it drew that number (both browsers on this machine's clock).

Side by side in the same run: the same chain without the transform (videoconvert only), so
the WebRTC part and the transform's part are both visible, and both against the frame interval.

    .venv/bin/python tests/python/webrtc_latency_bench.py [--seconds 20] [--fps 30] [--codec h264]
        [--whep-codec h264|vp8|per-viewer] [--whep-delay MS]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from i2i_web_helpers import ROOT, wait_for  # noqa: E402
from webrtc_helpers import Pages, WebRtcPipeline, chrome  # noqa: E402

BENCH_JS = """
const BLOCK = 128;
window.bench = {sent: {}, got: [], bad: 0};
function bits(n) { const b = []; for (let i = 0; i < 14; i++) b.push((n >> i) & 1); return b.concat([1, 0]); }
window.camera = (fps) => {
  const c = document.createElement('canvas'); c.width = 512; c.height = 512;
  const g = c.getContext('2d'); let n = 0;
  setInterval(() => {
    n = (n + 1) % 16384;
    bits(n).forEach((bit, i) => { g.fillStyle = bit ? '#fff' : '#000';
      g.fillRect((i % 4) * BLOCK, Math.floor(i / 4) * BLOCK, BLOCK, BLOCK); });
    window.bench.sent[n] = Date.now();
  }, 1000 / fps);
  return c.captureStream(fps);
};
window.reader = () => {
  const v = document.getElementById('v');
  const c = document.createElement('canvas'); c.width = 512; c.height = 512;
  const g = c.getContext('2d', {willReadFrequently: true});
  const onFrame = () => {
    const t = Date.now();
    if (v.videoWidth) {
      g.drawImage(v, 0, 0, 512, 512);
      let n = 0, ok = true;
      for (let i = 0; i < 16; i++) {
        const x = (i % 4) * BLOCK + BLOCK / 2 - 8, y = Math.floor(i / 4) * BLOCK + BLOCK / 2 - 8;
        const d = g.getImageData(x, y, 16, 16).data; let s = 0;
        for (let k = 0; k < d.length; k += 4) s += (d[k] + d[k + 1] + d[k + 2]) / 3;
        const bit = s / (d.length / 4) > 128 ? 1 : 0;
        if (i < 14) n |= bit << i; else if (bit !== (i === 14 ? 1 : 0)) ok = false;
      }
      if (ok) window.bench.got.push([n, t]); else window.bench.bad++;
    }
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);
};
window.publishCanvas = async (url, fps, codec) => {
  const stream = window.camera(fps);
  const pc = new RTCPeerConnection(); window.pc = pc;
  const tr = pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly'});
  if (codec) tr.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs
    .filter(c => c.mimeType.toLowerCase() === 'video/' + codec));
  await post(url, pc);
};
"""


def run(middle, label, args):
    tmp = tempfile.mkdtemp(prefix="i2i-webrtc-bench-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, middle=middle, extra_sink=f"codec={args.whep_codec} "
                         f"playout-delay={args.whep_delay}")
    pub = view = None
    try:
        pub, view = chrome(f"{tmp}/pub"), chrome(f"{tmp}/view")
        pub.get(pages.url)
        pub.execute_script(BENCH_JS)
        pub.execute_script("window.publishCanvas(arguments[0], arguments[1], arguments[2]);",
                           gst.whip, args.fps, args.codec)
        wait_for(lambda: "publisher-connected" in gst.messages(), 60, "the publisher")
        deadline = time.monotonic() + 60
        while True:
            view.get(pages.url)
            view.execute_script(BENCH_JS)
            view.execute_script("window.view(arguments[0]);", gst.whep)
            t = wait_for(lambda: view.execute_script(
                "return (window.t.status || window.t.error) ? window.t : null;"), 60, "WHEP")
            if t["status"] == 201 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert t["status"] == 201, t
        view.execute_script("window.reader();")
        try:
            wait_for(lambda: view.execute_script("return window.bench.got.length") > 10, 60,
                     "counters read back in the viewer")
        except AssertionError:
            diag = view.execute_script(
                "return [window.bench.bad, document.getElementById('v').videoWidth];")
            png = Path(tmp) / "viewer.png"
            view.save_screenshot(str(png))
            raise SystemExit(f"{label}: no counter read back ({diag[0]} unreadable frames, video "
                             f"width {diag[1]}); the viewer's screen: {png}")
        # Settle (the jitter buffer and congestion control start up), then measure.
        time.sleep(3)
        view.execute_script("window.bench.got = []; window.bench.bad = 0;")
        time.sleep(args.seconds)
        got = view.execute_script("return window.bench.got")
        bad = view.execute_script("return window.bench.bad")
        sent = pub.execute_script("return window.bench.sent")
        lat = sorted(t - sent[str(n)] for n, t in got if str(n) in sent and t >= sent[str(n)])
        if not lat:
            raise SystemExit(f"{label}: no frames read back")
        frames = len({n for n, _ in got})
        return {
            "label": label, "frames": frames, "fps": frames / args.seconds, "bad": bad,
            "p50": statistics.median(lat), "p95": lat[int(0.95 * (len(lat) - 1))],
        }
    finally:
        for b in (pub, view):
            if b is not None:
                b.quit()
        gst.stop()
        pages.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--codec", default="h264", choices=["h264", "vp8"],
                    help="what the camera page publishes in")
    ap.add_argument("--whep-codec", default="vp8", choices=["h264", "vp8", "per-viewer"],
                    help="i2iwhepsink codec= (encoded once in H264 or VP8, or per viewer)")
    ap.add_argument("--whep-delay", "--ts-offset", type=int, default=0,
                    help="i2iwhepsink playout-delay in ms (river's fixed delay; it adds to both chains)")
    args = ap.parse_args()
    model = ROOT / "models" / "demo"
    base = run("videoconvert", "WHIP -> WHEP (no transform)", args)
    full = run(f"videoconvert ! i2itransform model={model} width=512 height=512 ! videoconvert",
               "WHIP -> i2itransform demo 512x512 -> WHEP", args)
    interval = 1000 / args.fps
    print(f"camera {args.fps} fps, {args.codec}, i2iwhepsink codec={args.whep_codec} "
          f"whep playout-delay={args.whep_delay} ms, "
          f"{args.seconds:.0f} s measured; frame interval {interval:.1f} ms")
    for r in (base, full):
        print(f"{r['label']:45s} p50 {r['p50']:6.1f} ms  p95 {r['p95']:6.1f} ms  "
              f"({r['p50'] / interval:4.1f} frame intervals)  {r['fps']:5.1f} fps read back, "
              f"{r['bad']} unreadable")
    print(f"transform's share of the median: +{full['p50'] - base['p50']:.1f} ms "
          f"({full['p50'] / base['p50']:.2f}x the WebRTC-only latency)")


if __name__ == "__main__":
    main()
