#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""A viewer that falls behind affects only itself: one `i2iwhepsink` (shared encoder, 512 x 512
at 30 fps) with two WHEP viewers on 127.0.0.1 and one behind a throttled link, side by side in
the same run.

The throttled viewer runs in its own network namespace, joined to this one by a veth pair whose
egress towards it goes through a token-bucket filter (`tc qdisc ... tbf rate KBIT`), well below
the stream's bitrate: its packets queue and are dropped at the link, it asks for
retransmissions (NACK) and keyframes (PLI). The viewers are GStreamer's own WHEP client
(`whepclientsrc ! fpsdisplaysink`); each one's frames rendered per second over the measured
seconds are read from fpsdisplaysink. The figure of merit: the other viewers' frame rate with
the throttled viewer connected, against the same viewers' rate before it joined.

Needs root (network namespaces, tc); on a machine without them it says so and exits 2.

    .venv/bin/python tests/python/webrtc_slow_viewer_bench.py [--seconds 15] [--kbit 400] [--codec vp8]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from i2i_web_helpers import env, free_port, stop_process  # noqa: E402

NS = "i2i-slowview"
HOST_IF, NS_IF = "i2isv-h", "i2isv-s"
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"
SOURCE = ("videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
          "video/x-raw,width=512,height=512,framerate=30/1")
RENDERED = re.compile(r"last-message = rendered: (\d+), dropped: (\d+)")


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def link_up(kbit):
    link_down()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "-n", NS, "addr", "add", f"{NS_IP}/24", "dev", NS_IF)
    sh("ip", "-n", NS, "link", "set", NS_IF, "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("tc", "qdisc", "add", "dev", HOST_IF, "root", "tbf", "rate", f"{kbit}kbit",
       "burst", "16kb", "latency", "200ms")


def link_down():
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def link_drops():
    out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", HOST_IF], capture_output=True,
                         text=True).stdout
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)", out)
    return (int(m.group(2)), int(m.group(3))) if m else (0, 0)


class Viewer:
    """`whepclientsrc ! fpsdisplaysink` in gst-launch-1.0 (in the namespace when `netns`)."""

    def __init__(self, tmp, name, url, netns=None):
        self.path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.path, "w")
        cmd = [shutil.which("gst-launch-1.0"), "-v", "whepclientsrc",
               f"signaller::whep-endpoint={url}", "!", "videoconvert", "!", "fpsdisplaysink",
               "video-sink=fakesink", "text-overlay=false", "sync=false"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, env=env(), stdout=self.log, stderr=subprocess.STDOUT)

    def rendered(self):
        with open(self.path) as f:
            found = RENDERED.findall(f.read())
        return int(found[-1][0]) if found else 0

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def rates(viewers, seconds):
    """Frames rendered per second by each viewer over `seconds`."""
    before = [v.rendered() for v in viewers]
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return [(v.rendered() - b) / dt for v, b in zip(viewers, before)]


def wait_rendering(viewer, what, timeout=60):
    deadline = time.monotonic() + timeout
    while viewer.rendered() < 30:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} rendered no frames in {timeout} s: see {viewer.path}")
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--kbit", type=int, default=400, help="the throttled link's rate")
    ap.add_argument("--codec", default="vp8", choices=["vp8", "h264", "per-viewer"])
    ap.add_argument("--bitrate", type=int, default=2000, help="i2iwhepsink bitrate, kbit/s")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("needs root, ip and tc (network namespaces and a tbf qdisc)", file=sys.stderr)
        sys.exit(2)
    try:
        link_up(args.kbit)
    except subprocess.CalledProcessError as e:
        print(f"cannot set up the throttled link: {' '.join(e.cmd)}: {e.stderr.strip()}",
              file=sys.stderr)
        link_down()
        sys.exit(2)
    tmp = tempfile.mkdtemp(prefix="i2i-slow-viewer-")
    port = free_port()
    desc = (f"{SOURCE} ! i2iwhepsink host-addr=http://0.0.0.0:{port} "
            f"local-addresses=127.0.0.1,{HOST_IP} codec={args.codec} bitrate={args.bitrate}")
    log = open(os.path.join(tmp, "gst-launch.log"), "w")
    gst = subprocess.Popen([shutil.which("gst-launch-1.0"), "-m", *desc.split()], env=env(),
                           stdout=log, stderr=subprocess.STDOUT)
    viewers = []
    try:
        time.sleep(3)
        for i in range(2):
            viewers.append(Viewer(tmp, f"fast{i}", f"http://127.0.0.1:{port}/whep/endpoint"))
        for i, v in enumerate(viewers):
            wait_rendering(v, f"fast viewer {i}")
        alone = rates(viewers, args.seconds)
        slow = Viewer(tmp, "slow", f"http://{HOST_IP}:{port}/whep/endpoint", netns=NS)
        viewers.append(slow)
        time.sleep(3)
        p0, d0 = link_drops()
        together = rates(viewers, args.seconds)
        p1, d1 = link_drops()
        alive = gst.poll() is None
    finally:
        for v in viewers:
            v.stop()
        stop_process(gst)
        log.close()
        link_down()
    print(f"i2iwhepsink codec={args.codec} bitrate={args.bitrate} kbit/s, 512x512 at 30 fps; "
          f"throttled link {args.kbit} kbit/s; {args.seconds:.0f} s measured each")
    print("| | fast viewer 1 (fps) | fast viewer 2 (fps) | throttled viewer (fps) |")
    print("|---|---:|---:|---:|")
    print(f"| before the throttled viewer joined | {alone[0]:.1f} | {alone[1]:.1f} | |")
    print(f"| with the throttled viewer | {together[0]:.1f} | {together[1]:.1f} | "
          f"{together[2]:.1f} |")
    print(f"throttled link: {p1 - p0} packets sent, {d1 - d0} dropped while measured; "
          f"pipeline {'still running' if alive else 'ENDED'}; logs in {tmp}")
    worst = min(together[:2]) / max(min(alone), 1e-9)
    print(f"fast viewers with / without the throttled one: {worst:.3f}x (worst of the two)")


if __name__ == "__main__":
    main()
