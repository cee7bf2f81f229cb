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
        lines = [self.proc.stdout.readline() for _ in range(2)]
        text = "".join(lines)
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


class Holder:
    """`i2i-prompt serve` on ephemeral ports."""

    def __init__(self, *init):
        self.state = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        args = [binary("i2i-prompt"), "serve", "--state-bind", self.state,
                "--control-bind", self.control]
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
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
