#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""What a WHEP viewer costs: CPU of the pipeline process with 1 and with 3 headless Chromium
viewers, for `i2iwhepsink codec=vp8` (encoded once for all viewers; `--once h264` for H264)
and `codec=per-viewer` (webrtcsink's one encoder per viewer), side by side in the same run.

The source is `videotestsrc` (moving SMPTE bars, 512 x 512, 30 fps) so that only the WHEP
side is measured. CPU is the gst-launch-1.0 process's user + system time over the measured
seconds (from /proc), in cores; the browsers' own decoding is not counted. Each viewer's
decoded frame rate is read from its getStats.

    .venv/bin/python tests/python/webrtc_viewers_bench.py [--seconds 15] [--viewers 1,3] [--once vp8]
"""

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webrtc_helpers import Pages, WebRtcPipeline, chrome, decoded, stats, view  # noqa: E402

SOURCE = ("videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
          "video/x-raw,width=512,height=512,framerate=30/1")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(codec, viewers, seconds):
    tmp = tempfile.mkdtemp(prefix="i2i-whep-bench-")
    pages = Pages(tmp)
    gst = WebRtcPipeline(tmp, source=SOURCE, extra_sink=f"codec={codec}")
    browsers = []
    try:
        for i in range(viewers):
            b = chrome(f"{tmp}/view{i}")
            browsers.append(b)
            t = view(b, pages, gst.whep)
            if t["status"] != 201:
                raise SystemExit(f"{codec}: viewer {i} refused: {t}")
        for b in browsers:
            decoded(b, frames=30)
        time.sleep(2)
        before = [stats(b, "inbound-rtp")["framesDecoded"] for b in browsers]
        c0, t0 = cpu_seconds(gst.proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(gst.proc.pid), time.monotonic()
        after = [stats(b, "inbound-rtp")["framesDecoded"] for b in browsers]
        counts = re.findall(r"encoders=\(uint\)(\d+)", gst.messages())
        return {
            "codec": codec, "viewers": viewers, "cpu": (c1 - c0) / (t1 - t0),
            "encoders": max(int(n) for n in counts) if counts else 0,
            "fps": [(a - b) / (t1 - t0) for a, b in zip(after, before)],
        }
    finally:
        for b in browsers:
            b.quit()
        gst.stop()
        pages.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--viewers", default="1,3")
    ap.add_argument("--once", default="vp8", choices=["vp8", "h264"],
                    help="the codec encoded once for all viewers")
    args = ap.parse_args()
    ns = [int(n) for n in args.viewers.split(",")]
    results = {(c, n): run(c, n, args.seconds) for c in (args.once, "per-viewer") for n in ns}
    print(f"512x512 at 30 fps, {args.seconds:.0f} s measured; CPU of the pipeline process in cores")
    for r in results.values():
        fps = ", ".join(f"{f:.1f}" for f in r["fps"])
        print(f"codec={r['codec']:10s} {r['viewers']} viewer(s): CPU {r['cpu']:.2f}, "
              f"encoders {r['encoders']}, decoded fps per viewer {fps}")
    lo, hi = ns[0], ns[-1]
    for c in (args.once, "per-viewer"):
        print(f"codec={c}: {hi} viewers cost {results[(c, hi)]['cpu'] / results[(c, lo)]['cpu']:.2f}x "
              f"the CPU of {lo}")
    print(f"{hi} viewers: encode once / per viewer = "
          f"{results[(args.once, hi)]['cpu'] / results[('per-viewer', hi)]['cpu']:.2f}x CPU")


if __name__ == "__main__":
    main()
