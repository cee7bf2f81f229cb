#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""What abuse costs i2i-web: the figures of docs/web.md's "Security and limits", measured
on any i2i-web binary (so the same run can be made on an older build to compare).

- PNG bombs: 20 PNGs of 8192 x 8192 (196 KB each) as seed-001 messages, 10 a second, while
  a binary WebSocket viewer watches a 30 fps output: i2i-web's CPU time and peak memory, the
  viewer's rate before and during.
- JPEG bombs: 80 JPEGs of 694 bytes declaring 8192 x 8192, as the page's binary frames:
  how many i2i-web publishes to the pipeline, and what one costs GStreamer's jpegdec.
- Pong flood: a client that never reads sends pings of 125 bytes for up to 15 s: memory
  growth, pings sent before i2i-web drops it.
- Partial messages: 30 connections each announce a message of 20 MB and send all but
  1 KB of it; then the same at 11 MB (within the current default limit): peak memory, and
  how many are still held 15 s later.
- Holder down: the settings holder is stopped while 10 clients send a control 20 times a
  second each: how long the operator's command waits for its answer; then the holder comes
  back with a fresh state, and the changes it receives in the next 10 s are counted
  (commands replayed from the time it was away).

Run from the repository root (i2i-prompt from target/release):

    .venv/bin/python tools/i2i-web/abuse_bench.py [--binary target/release/i2i-web] [--only png,jpeg,pong,partial,holder]
"""

import argparse
import asyncio
import base64
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import msgpack
import zmq
from PIL import Image
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Web:
    def __init__(self, binary, control="none", extra=()):
        self.out_port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--publish", "tcp://127.0.0.1:*",
             "--subscribe", f"tcp://127.0.0.1:{self.out_port}", "--control", control, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        text = ""
        while not ("page" in text and "published on" in text):
            text += self.proc.stdout.readline()
        self.host, port = re.search(r"page http://([0-9.]+):(\d+)/", text).groups()
        self.port = int(port)
        self.publish = re.search(r"published on (tcp://\S+),", text).group(1)
        self.ws = f"ws://{self.host}:{self.port}"

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # MiB

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stats(self):
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/api/stats", timeout=30) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def png_bomb(size=8192):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = bytes(1 + size * 3)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(size)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, "JPEG", quality=50)
    j = bytearray(buf.getvalue())
    sof = j.index(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(j)


def play_output(port, stop, fps=30):
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"tcp://127.0.0.1:{port}")
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 60, 40)).save(buf, "JPEG")
    jpg, index = buf.getvalue(), 0
    while not stop.is_set():
        pub.send(msgpack.packb([int(time.time() * 1000), index, jpg]))
        index += 1
        time.sleep(1 / fps)
    pub.close()


async def frames_in(ws, seconds):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            m = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
        except asyncio.TimeoutError:
            break
        n += isinstance(m, bytes)
    return n


def ws_frame(opcode, payload=b"", length=None):
    n = len(payload) if length is None else length
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # a zero mask leaves the payload as it is


def raw_ws(web, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((web.host, web.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws?relay=0 HTTP/1.1\r\nHost: {web.host}:{web.port}\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
              .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    return s


def png_bombs(binary):
    bomb = json.dumps({"type": "image", "format": "png",
                       "data": base64.b64encode(png_bomb()).decode(), "timestamp": time.time()})
    web = Web(binary)
    stop = threading.Event()
    threading.Thread(target=play_output, args=(web.out_port, stop), daemon=True).start()
    try:
        async def run():
            async with connect(web.ws + "/ws?output=binary&relay=0") as viewer, \
                    connect(web.ws + "/ws?relay=0", max_size=None) as attacker:
                await frames_in(viewer, 1.0)
                quiet = await frames_in(viewer, 3.0) / 3.0
                base_mem, cpu0, t0 = web.status("VmHWM"), web.cpu(), time.monotonic()

                async def attack():
                    for _ in range(20):
                        await attacker.send(bomb)
                        await asyncio.sleep(0.1)
                    while True:
                        s = await asyncio.to_thread(web.stats)
                        if s["images-received"] + s["rejected"] >= 20 or time.monotonic() - t0 > 120:
                            return s

                async def watch():
                    counts = []
                    while not done.is_set():
                        counts.append(await frames_in(viewer, 1.0))
                    return counts

                done = threading.Event()
                watcher = asyncio.create_task(watch())
                s = await attack()
                took = time.monotonic() - t0
                done.set()
                counts = await watcher
                during = min(counts) if counts else 0
                return (quiet, during, took, web.cpu() - cpu0,
                        web.status("VmHWM") - base_mem, s["images-received"])

        q, d, took, cpu, mem, accepted = asyncio.run(run())
        print(f"| 20 PNG bombs 8192x8192 (196 KB each) | accepted {accepted}/20; "
              f"{cpu:.1f} s CPU in i2i-web ({cpu / 20:.2f} s each); all answered after {took:.1f} s; "
              f"peak memory +{mem:.0f} MiB; viewer {q:.1f} fps before, {d:.0f} fps in its worst second |")
    finally:
        stop.set()
        web.stop()


def jpeg_bombs(binary):
    tiny = jpeg_declaring(8192, 8192)
    web = Web(binary)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(web.publish)
    time.sleep(0.5)
    try:
        async def run():
            async with connect(web.ws + "/ws?relay=0") as attacker:
                for i in range(80):
                    await attacker.send(msgpack.packb([int(time.time() * 1000), i, tiny]))
                    await asyncio.sleep(0.025)
        asyncio.run(run())
        published = 0
        while sub.poll(1000):
            sub.recv()
            published += 1
        cost = "-"
        launch = shutil.which("gst-launch-1.0")
        if launch:
            with tempfile.TemporaryDirectory() as d:
                times = {}
                for name, data in (("bomb", tiny), ("small", jpeg_declaring(16, 16))):
                    path = Path(d) / f"{name}.jpg"
                    path.write_bytes(data)
                    t = time.perf_counter()
                    subprocess.run([launch, "-q", "filesrc", f"location={path}", "!", "jpegdec", "!",
                                    "fakesink"], capture_output=True, timeout=120)
                    times[name] = time.perf_counter() - t
                cost = f"{times['bomb'] - times['small']:.2f} s"
        print(f"| 80 JPEG bombs ({len(tiny)} bytes, declaring 8192x8192) | {published}/80 published to "
              f"the pipeline; jpegdec spends {cost} on one |")
    finally:
        sub.close()
        web.stop()


def pong_flood(binary):
    web = Web(binary)
    try:
        base = web.status("VmRSS")
        s = raw_ws(web, rcvbuf=4096)
        burst = ws_frame(0x9, bytes(125)) * 4000
        sent, t0, cut = 0, time.monotonic(), None
        try:
            while time.monotonic() - t0 < 15 and sent < 2_400_000:
                s.sendall(burst)
                sent += 4000
        except OSError:
            cut = time.monotonic() - t0
        flood = time.monotonic() - t0
        grown = web.status("VmHWM") - base
        # Asked from i2i-web's counters: reading the socket would take the pongs away.
        while cut is None and time.monotonic() - t0 < flood + 20:
            if web.stats()["clients"] == 0:
                cut = time.monotonic() - t0
            time.sleep(0.25)
        held = f"dropped {cut:.1f} s after it began" if cut else "still connected 20 s after it"
        print(f"| ping flood, never reading | {sent} pings in {flood:.1f} s; peak memory "
              f"+{grown:.0f} MiB; {held} |")
        s.close()
    finally:
        web.stop()


def partial_messages(binary, size):
    web = Web(binary, extra=())
    conns = []
    try:
        base = web.status("VmRSS")
        chunk = bytes(1 << 20)
        for _ in range(30):
            s = raw_ws(web)
            s.settimeout(30)
            try:
                s.sendall(ws_frame(0x2, b"", length=size))
                left = size - 1024
                while left > 0:
                    n = min(left, len(chunk))
                    s.sendall(chunk[:n])
                    left -= n
            except OSError:
                pass
            conns.append(s)
        time.sleep(1.0)
        peak = web.status("VmHWM") - base
        time.sleep(14.0)
        held = web.stats()["clients"]
        now = web.status("VmRSS") - base
        print(f"| 30 connections, each {size / 1e6:.0f} MB announced, all but 1 KB sent | peak memory "
              f"+{peak:.0f} MiB; 15 s later {held}/30 still held, +{now:.0f} MiB |")
    finally:
        for s in conns:
            s.close()
        web.stop()


def holder_down(binary):
    release = ROOT / "target/release/i2i-prompt"
    state, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"

    def holder(*init):
        args = [str(release), "serve", "--state-bind", state, "--control-bind", control, "--osc", "off"]
        for c in init:
            args += ["--init", c]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def seq():
        out = subprocess.run([str(release), "--endpoint", control, "--report-ms", "0", "/status"],
                             capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"seq=(\d+)", out)
        return int(m.group(1)) if m else None

    h = holder("/prompt before")
    time.sleep(0.5)
    web = Web(binary, control=control)
    stop = threading.Event()
    try:
        async def chatty(k):
            async with connect(web.ws + "/ws?relay=0") as ws:
                i = 0
                while not stop.is_set():
                    i += 1
                    await ws.send(json.dumps({"type": "control", "command": f"/seed {1000 + k * 100 + i % 100}",
                                              "id": i}))
                    await asyncio.sleep(0.05)

        async def run():
            async with connect(web.ws + "/ws?relay=0") as operator:
                await operator.send(json.dumps({"type": "control", "command": "/seed 7", "id": 1}))
                await asyncio.wait_for(operator.recv(), 10)
                h.terminate()
                h.wait()
                tasks = [asyncio.create_task(chatty(k)) for k in range(10)]
                await asyncio.sleep(4.0)
                t0 = time.monotonic()
                await operator.send(json.dumps({"type": "control", "command": "/prompt operator", "id": 2}))
                answer = None
                while time.monotonic() - t0 < 90:
                    m = json.loads(await asyncio.wait_for(operator.recv(), 90))
                    if m.get("id") == 2:
                        answer = m
                        break
                took = time.monotonic() - t0
                stop.set()
                await asyncio.gather(*tasks)
                return took, answer

        took, answer = asyncio.run(run())
        h2 = holder("/prompt after")
        time.sleep(10.0)
        replayed = seq()
        h2.terminate()
        h2.wait()
        said = (answer or {}).get("error", (answer or {}).get("answer", "no answer"))
        print(f"| holder down, 10 clients x 20 controls/s | operator answered after {took:.1f} s "
              f"({said[:60]}...); changes applied by the returning holder in 10 s: {replayed} |")
    finally:
        stop.set()
        web.stop()
        if h.poll() is None:
            h.terminate()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/i2i-web"))
    ap.add_argument("--only", default="png,jpeg,pong,partial,holder")
    args = ap.parse_args()
    only = set(args.only.split(","))
    print(f"i2i-web abuse figures for {args.binary}\n\n| input | result |\n|---|---|")
    if "png" in only:
        png_bombs(args.binary)
    if "jpeg" in only:
        jpeg_bombs(args.binary)
    if "pong" in only:
        pong_flood(args.binary)
    if "partial" in only:
        partial_messages(args.binary, 20_000_000)
        partial_messages(args.binary, 11_000_000)
    if "holder" in only:
        holder_down(args.binary)


if __name__ == "__main__":
    main()
