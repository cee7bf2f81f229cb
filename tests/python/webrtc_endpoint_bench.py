#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""The WHIP/WHEP endpoints under the two abuses of issue 21, measured.

Publishers in turn: three GStreamer WHIP publishers (whipclientsink, 320 x 240 at 30 fps)
one after the other, each sending `--frames` frames and then ending (EOS, DELETE), into
`i2iwhipsrc ! videoconvert [! i2itransform demo 256 x 192] ! jpegenc ! zmqmsgpacksink`; a
ZeroMQ subscriber counts the frames that come out while each publisher runs (until the output
has been quiet for a second after it ended).

Offer flood: `--offers` WHEP offers that never connect (valid SDP, no peer behind them),
`--concurrency` at a time, at `videotestsrc ! i2iwhepsink` (default limits); the pipeline
process's open descriptors and threads are sampled from /proc every 50 ms, and the answers
counted.

    .venv/bin/python tests/python/webrtc_endpoint_bench.py [--codec vp8|h264] [--transform]
        [--frames 90] [--offers 75] [--concurrency 8]
"""

import argparse
import concurrent.futures
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from i2i_web_helpers import wait_for  # noqa: E402
from webrtc_helpers import (FrameCounter, Publisher, WebRtcPipeline, fake_offer, fds,  # noqa: E402
                            http, listening, threads, transform_chain, zmq_output)


def publishers_in_turn(codec, transform, frames):
    tmp = tempfile.mkdtemp(prefix="i2i-whip-bench-")
    middle = transform_chain(256, 192) if transform else "videoconvert"
    sink, endpoint = zmq_output()
    gst = WebRtcPipeline(tmp, middle=middle, sink=sink)
    out = FrameCounter(endpoint)
    counts = []
    try:
        wait_for(lambda: listening(gst.whip), 30, "the WHIP endpoint")
        for i in range(3):
            start = time.monotonic()
            p = Publisher(gst.whip, codec, fps=30, frames=frames, log=f"{tmp}/pub{i}.log")
            try:
                p.proc.wait(timeout=60 + frames / 10)
            finally:
                p.stop()
            out.quiet(1.0)
            counts.append(out.since(start))
        alive = gst.proc.poll() is None
        critical = gst.messages().count("CRITICAL")
    finally:
        out.stop()
        gst.stop()
    return counts, alive, critical


def offer_flood(offers, concurrency):
    tmp = tempfile.mkdtemp(prefix="i2i-whep-flood-bench-")
    gst = WebRtcPipeline(tmp, source=("videotestsrc is-live=true ! "
                                      "video/x-raw,width=320,height=240,framerate=15/1"))
    try:
        wait_for(lambda: listening(gst.whep), 30, "the WHEP endpoint")
        wait_for(lambda: http("POST", gst.whep, fake_offer(direction="recvonly"))[0] == 201,
                 60, "the WHEP endpoint to take offers")
        time.sleep(6)  # that offer's session times out
        pid = gst.proc.pid
        base = (fds(pid), threads(pid))
        peak = list(base)
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], fds(pid))
                    peak[1] = max(peak[1], threads(pid))
                except OSError:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(
                lambda _: http("POST", gst.whep, fake_offer(direction="recvonly"))[0],
                range(offers)))
        took = time.monotonic() - start
        time.sleep(7)
        done.set()
        sampler.join()
        after = (fds(pid), threads(pid)) if gst.proc.poll() is None else None
        return base, peak, after, statuses, took, gst.proc.poll() is None
    finally:
        gst.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    ap.add_argument("--transform", action="store_true", help="i2itransform in the chain")
    ap.add_argument("--frames", type=int, default=90, help="frames each publisher sends")
    ap.add_argument("--offers", type=int, default=75)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-publishers", action="store_true")
    ap.add_argument("--skip-flood", action="store_true")
    args = ap.parse_args()
    if not args.skip_publishers:
        counts, alive, critical = publishers_in_turn(args.codec, args.transform, args.frames)
        chain = "with i2itransform" if args.transform else "videoconvert only"
        print(f"publishers in turn ({args.codec}, {chain}, {args.frames} frames each): "
              f"frames out {counts}; pipeline {'running' if alive else 'GONE'}; "
              f"{critical} CRITICAL")
    if not args.skip_flood:
        base, peak, after, statuses, took, alive = offer_flood(args.offers, args.concurrency)
        answered = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"WHEP offer flood ({args.offers} offers, {args.concurrency} at a time, "
              f"{took:.1f} s): answers {answered}; descriptors {base[0]} -> peak {peak[0]}"
              f" -> {after[0] if after else '-'} 7 s later; threads {base[1]} -> peak {peak[1]}"
              f" -> {after[1] if after else '-'}; pipeline {'running' if alive else 'GONE'}")


if __name__ == "__main__":
    main()
