#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Benchmark of i2i-web's two paths, each side by side with its reference in the same run.

- Output (pipeline -> browser): frames published on ZeroMQ at a camera's rate reach a direct
  ZeroMQ subscriber and, through i2i-web, a binary WebSocket viewer and an MJPEG reader.
  Reported: frames received and latency (median, 95th percentile) for each, and the time
  i2i-web adds (its latency minus the direct subscriber's).
- Input (browser -> pipeline): a seed-001 client sends base64 JPEG messages as fast as its
  acks come back; a ZeroMQ subscriber on i2i-web's publish socket receives them. Reported:
  images per second accepted, as a ratio of a 30 fps camera, and the latency from send to
  publish.

Run from the repository root after `cargo build --release`:

    .venv/bin/python tools/i2i-web/bench.py [--seconds 5] [--fps 30] [--size 512]
"""

import argparse
import asyncio
import base64
import io
import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import zmq
from PIL import Image
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jpeg(size):
    # A picture with detail, so the JPEG has a realistic size (about 30-60 KB at 512 x 512).
    img = Image.effect_mandelbrot((size, size), (-2.0, -1.5, 1.0, 1.5), 60).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summary(name, latencies, count, sent):
    return (f"| {name} | {count} / {sent} | {statistics.median(latencies):.2f} | "
            f"{pct(latencies, 0.95):.2f} |") if latencies else f"| {name} | 0 / {sent} | - | - |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()

    out_port = free_port()
    web = subprocess.Popen(
        [str(ROOT / "target/release/i2i-web"), "--listen", "127.0.0.1:0",
         "--publish", "tcp://127.0.0.1:*", "--subscribe", f"tcp://127.0.0.1:{out_port}",
         "--control", "none", "--max-rate", "10000"],
        stdout=subprocess.PIPE, text=True)
    text = web.stdout.readline() + web.stdout.readline()
    host, port = re.search(r"page http://([0-9.]+):(\d+)/", text).groups()
    publish = re.search(r"published on (tcp://\S+),", text).group(1)
    jpg = test_jpeg(args.size)
    ctx = zmq.Context.instance()

    # ---- output path ----
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{out_port}")
    direct = ctx.socket(zmq.SUB)
    direct.subscribe(b"")
    direct.connect(f"tcp://127.0.0.1:{out_port}")
    sent_at = {}
    got = {"direct": {}, "websocket": {}, "mjpeg": []}
    stop = threading.Event()

    def direct_reader():
        while not stop.is_set():
            if direct.poll(100):
                _, index, _ = msgpack.unpackb(direct.recv())
                got["direct"][index] = time.perf_counter()

    def mjpeg_reader():
        with urllib.request.urlopen(f"http://{host}:{port}/stream.mjpg", timeout=10) as r:
            while not stop.is_set():
                head = b""
                while b"\r\n\r\n" not in head:
                    head += r.read(1)
                n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                r.read(n + 2)
                got["mjpeg"].append(time.perf_counter())

    async def output_path():
        async with connect(f"ws://{host}:{port}/ws?output=binary&relay=0", max_size=None) as ws:
            threading.Thread(target=direct_reader, daemon=True).start()
            threading.Thread(target=mjpeg_reader, daemon=True).start()
            await asyncio.sleep(1.0)  # subscriptions settle

            def sender():
                n = int(args.seconds * args.fps)
                t0 = time.perf_counter()
                for i in range(n):
                    target = t0 + i / args.fps
                    while time.perf_counter() < target:
                        time.sleep(0.0005)
                    sent_at[i] = time.perf_counter()
                    pub.send(msgpack.packb([int(time.time() * 1000), i, jpg]))

            t = threading.Thread(target=sender)
            t.start()
            end = time.perf_counter() + args.seconds + 1.0
            while time.perf_counter() < end:
                try:
                    m = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                if isinstance(m, bytes):
                    got["websocket"][msgpack.unpackb(m)[1]] = time.perf_counter()
            t.join()

    asyncio.run(output_path())
    stop.set()
    sent = len(sent_at)
    lat = {k: [(v - sent_at[i]) * 1000 for i, v in got[k].items() if i in sent_at]
           for k in ("direct", "websocket")}

    # ---- input path ----
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(publish)
    published = []

    def publish_reader():
        while not stop2.is_set():
            if sub.poll(100):
                ts, _, _ = msgpack.unpackb(sub.recv())
                published.append((ts, time.time()))

    stop2 = threading.Event()
    threading.Thread(target=publish_reader, daemon=True).start()
    time.sleep(0.5)
    b64 = base64.b64encode(jpg).decode()

    async def input_path():
        n = 0
        async with connect(f"ws://{host}:{port}/") as ws:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                await ws.send(json.dumps({"type": "image", "format": "jpeg", "data": b64,
                                          "timestamp": time.time()}))
                await ws.recv()
                n += 1
            return n / (time.perf_counter() - t0)

    rate = asyncio.run(input_path())
    time.sleep(0.5)
    stop2.set()
    in_lat = [(arrived * 1000 - ts) for ts, arrived in published]

    stats = json.load(urllib.request.urlopen(f"http://{host}:{port}/api/stats"))
    web.terminate()
    web.wait()

    print(f"i2i-web benchmark: {args.size} x {args.size} JPEG of {len(jpg) / 1024:.1f} KB, "
          f"{args.fps:g} fps for {args.seconds:g} s, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print()
    print("| output path | frames received / sent | latency median (ms) | latency p95 (ms) |")
    print("|---|---|---|---|")
    print(summary("ZeroMQ SUB, direct (reference)", lat["direct"], len(lat["direct"]), sent))
    print(summary("through i2i-web, binary WebSocket", lat["websocket"], len(lat["websocket"]), sent))
    print(f"| through i2i-web, MJPEG | {len(got['mjpeg'])} / {sent} | - | - |")
    if lat["direct"] and lat["websocket"]:
        added = statistics.median(lat["websocket"]) - statistics.median(lat["direct"])
        print(f"\ni2i-web adds {added:.2f} ms (median) to a frame on its way to a browser socket, "
              f"{added / (1000 / args.fps):.3f} of the {1000 / args.fps:.1f} ms frame interval.")
    print()
    print("| input path (seed-001 JSON, one ack per image) | value |")
    print("|---|---|")
    print(f"| images accepted per second | {rate:.0f} ({rate / args.fps:.1f} x a {args.fps:g} fps camera) |")
    print(f"| send -> published on ZeroMQ, median / p95 (ms) | {pct(in_lat, 0.5):.1f} / {pct(in_lat, 0.95):.1f} |")
    print(f"| images published / dropped by i2i-web | {stats['published']} / {stats['dropped-publish']} |")


if __name__ == "__main__":
    main()
