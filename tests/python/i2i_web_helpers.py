# SPDX-License-Identifier: MPL-2.0
"""Processes for the i2i-web tests: i2i-web itself, the settings holder (i2i-prompt) and a
real transform pipeline (gst-launch-1.0), each on ephemeral ports of 127.0.0.1.

Ports that a program binds but cannot report (gst-launch, i2i-prompt) are taken free
from the kernel just before; i2i-web reports its own on stdout.
"""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"


def env():
    e = dict(os.environ)
    if not e.get("GST_PLUGIN_PATH"):
        e["GST_PLUGIN_PATH"] = str(RELEASE)
    if not e.get("ORT_DYLIB_PATH"):
        e["ORT_DYLIB_PATH"] = str(ROOT / ".deps" / "lib" / "libonnxruntime.so")
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name):
    path = RELEASE / name
    if not path.exists():
        pytest.skip(f"{path} is not built (cargo build --release)")
    return str(path)


class Web:
    """i2i-web on 127.0.0.1 with an ephemeral HTTP port and PUB endpoint."""

    def __init__(self, *args, subscribe=None, control=None):
        self.out_port = free_port()
        cmd = [
            binary("i2i-web"),
            "--listen", "127.0.0.1:0",
            "--publish", "tcp://127.0.0.1:*",
            "--subscribe", subscribe or f"tcp://127.0.0.1:{self.out_port}",
            "--control", control or "none",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines = [self.proc.stdout.readline() for _ in range(3)]
        self.startup = text = "".join(lines)
        m = re.search(r"page (https?)://([0-9.]+):(\d+)/", text)
        p = re.search(r"published on (tcp://\S+),", text)
        if not m or not p:
            self.stop()
            raise AssertionError(f"i2i-web did not start: {text}{self.proc.stderr.read()}")
        scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        self.http = f"{scheme}://{self.host}:{self.port}"
        self.ws = f"{'wss' if scheme == 'https' else 'ws'}://{self.host}:{self.port}"
        self.publish = p.group(1)

    def stop(self):
        stop_process(self.proc)
        return self.proc.stderr.read() if self.proc.stderr else ""

    def stats(self):
        """The counters of /api/stats."""
        import json
        import urllib.request

        with urllib.request.urlopen(self.http + "/api/stats", timeout=10) as r:
            return json.load(r)

    def memory_kib(self, field="VmHWM"):
        """i2i-web's peak (VmHWM) or current (VmRSS) resident memory, in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} for i2i-web")


class Holder:
    """`i2i-prompt serve` on ephemeral ports (or on the ports of a holder it replaces)."""

    def __init__(self, *init, ports_of=None):
        if ports_of is not None:
            self.state, self.control = ports_of.state, ports_of.control
        else:
            self.state = f"tcp://127.0.0.1:{free_port()}"
            self.control = f"tcp://127.0.0.1:{free_port()}"
        args = [binary("i2i-prompt"), "serve", "--state-bind", self.state,
                "--control-bind", self.control, "--osc", "off"]
        for c in init:
            args += ["--init", c]
        self.proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def stop(self):
        stop_process(self.proc)


def pipeline(web, holder=None, model="models/demo"):
    """zmqmsgpacksrc ! jpegdec ! i2itransform ! zmqmsgpacksink between i2i-web's two endpoints."""
    launch = shutil.which("gst-launch-1.0")
    if launch is None:
        pytest.skip("gst-launch-1.0 not installed (apt install gstreamer1.0-tools)")
    if not (ROOT / model).exists():
        pytest.skip(f"{model} missing (python scripts/make_models.py --out models)")
    desc = []
    if holder is not None:
        desc += ["settingssrc", f"endpoint={holder.state}", "!", "i2i.settings"]
    desc += [
        "zmqmsgpacksrc", f"endpoint={web.publish}", "!", "jpegdec", "!",
        "i2itransform", "name=i2i", f"model={ROOT / model}", "!",
        "zmqmsgpacksink", f"endpoint=tcp://127.0.0.1:{web.out_port}",
    ]
    return subprocess.Popen([launch, "-q", *desc], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    # `what` may be a callable, read only on failure (to show the state at that moment).
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


class RawWs:
    """A WebSocket client written frame by frame over a plain socket, for what the
    `websockets` package will not send: unmasked or reserved frames, invalid UTF-8, a frame
    header announcing more than it sends, pings without reading the answers."""

    def __init__(self, web, path="/ws?relay=0", rcvbuf=None, host=None):
        import base64 as b64

        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((web.host, web.port))
        key = b64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host or f'{web.host}:{web.port}'}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1") else None
        self.buf = b""

    @staticmethod
    def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
        """One frame; `length` announces another payload length than the one given."""
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        m = 0x80 if mask else 0
        if n < 126:
            head += bytes([m | n])
        elif n < 65536:
            head += bytes([m | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([m | 127]) + n.to_bytes(8, "big")
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, data):
        self.sock.sendall(data)

    def _read(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout=10):
        """(opcode, payload) of the server's next frame."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2, deadline), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8, deadline), "big")
        return b0 & 0x0F, self._read(n, deadline)

    def close_frame(self, timeout=10):
        """(code, reason) of the close frame the server sends, skipping other frames; None
        when the connection ends without one."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                op, payload = self.recv_frame(max(0.05, deadline - time.monotonic()))
                if op == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    return code, payload[2:].decode("utf-8", "replace")
        except (EOFError, ConnectionResetError):
            return None

    def close(self):
        self.sock.close()
