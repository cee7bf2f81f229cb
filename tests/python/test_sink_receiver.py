# SPDX-License-Identifier: MPL-2.0
"""zmqmsgpacksink seen from Python, as the original system's receivers see it.

A gst-launch-1.0 pipeline sends frames to a PULL socket bound here; each message must
unpack to [int, int, bytes]: a timestamp in ms since the Unix epoch close to now, an
increasing frame index, and a JPEG that Pillow decodes at the pipeline's size.
"""

import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 20
WIDTH, HEIGHT = 320, 240


def gst_env():
    env = dict(os.environ)
    # Use the plugin path from the environment (.deps/env.sh); fall back to this
    # checkout's release build.
    if not env.get("GST_PLUGIN_PATH"):
        env["GST_PLUGIN_PATH"] = str(ROOT / "target" / "release")
    return env


@pytest.fixture(scope="module")
def gst_launch():
    launch = shutil.which("gst-launch-1.0")
    inspect = shutil.which("gst-inspect-1.0")
    if launch is None or inspect is None:
        pytest.skip("gst-launch-1.0 / gst-inspect-1.0 not installed (apt install gstreamer1.0-tools)")
    found = subprocess.run(
        [inspect, "zmqmsgpacksink"], env=gst_env(), capture_output=True, text=True, timeout=60
    )
    if found.returncode != 0:
        pytest.skip(
            "the zmqmsgpacksink plugin is not found on GST_PLUGIN_PATH="
            f"{gst_env()['GST_PLUGIN_PATH']} (build it: cargo build --release; . .deps/env.sh)"
        )
    return launch


@pytest.fixture
def pull():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close()
    ctx.term()


@pytest.mark.parametrize(
    "fmt,encoder",
    [
        ("I420", ""),
        ("RGB", ""),
        ("NV12", ""),
        # JPEG input goes out as it is.
        ("I420", "! jpegenc quality=80"),
    ],
)
def test_sink_messages_decode_in_python(gst_launch, pull, fmt, encoder):
    sock, port = pull
    pipeline = (
        f"videotestsrc is-live=true num-buffers={FRAMES} pattern=smpte "
        f"! video/x-raw,format={fmt},width={WIDTH},height={HEIGHT},framerate=30/1 {encoder} "
        f"! zmqmsgpacksink endpoint=tcp://127.0.0.1:{port} bind=false socket-type=push"
    )
    proc = subprocess.Popen(
        [gst_launch, "-q", *pipeline.split()],
        env=gst_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = []
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        deadline = time.time() + 30
        while len(messages) < FRAMES and time.time() < deadline:
            if poller.poll(200):
                raw = sock.recv()
                messages.append((time.time(), raw))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"gst-launch-1.0 failed: {err}"
    assert len(messages) == FRAMES, f"got {len(messages)} of {FRAMES} frames; stderr: {err}"

    last_index = -1
    for received_at, raw in messages:
        msg = msgpack.unpackb(raw)
        assert isinstance(msg, list) and len(msg) == 3, msg if len(raw) < 100 else type(msg)
        timestamp, index, jpg = msg
        assert type(timestamp) is int and type(index) is int and type(jpg) is bytes
        assert index > last_index, f"index {index} after {last_index}"
        last_index = index
        latency_ms = received_at * 1000 - timestamp
        assert -1000 < latency_ms < 5000, f"timestamp {timestamp} is {latency_ms:.0f} ms from now"
        image = Image.open(io.BytesIO(jpg))
        assert image.format == "JPEG"
        image.load()
        assert image.size == (WIDTH, HEIGHT)
    assert last_index == FRAMES - 1
