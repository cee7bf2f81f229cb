"""pipelines/split-unet.sh and pipelines/split-decode.sh end to end on 127.0.0.1, over GDP/TCP
and over ZeroMQ (--zmq, float32 and float16 on the wire): the UNet side serves latents of the
tiny model on a free port, the decoder side connects and writes PNG files; both refuse bad
arguments by name."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from i2i_web_helpers import ROOT, env

UNET = ROOT / "pipelines" / "split-unet.sh"
DECODE = ROOT / "pipelines" / "split-decode.sh"
MODEL = ROOT / "models" / "tiny-sd15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.stderr.read() if p.stderr else ""


@pytest.mark.parametrize("transport", [[], ["--zmq"], ["--zmq", "--fp16-wire"]], ids=["gdp", "zmq", "zmq-fp16"])
def test_latents_cross_tcp_and_come_out_as_pictures(tmp_path, transport):
    assert (MODEL / "vae_decoder" / "model.onnx").is_file(), "run scripts/setup.sh (it generates the tiny models)"
    port = free_port()
    unet = subprocess.Popen(["bash", str(UNET), "--model", str(MODEL), "--size", "64", "--port", str(port),
                             "--threads", "1", *transport, "wait-for-settings=false"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dec = None
    try:
        # The server listens once the pipeline is PLAYING.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert unet.poll() is None, stop(unet)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        out = tmp_path / "out"
        dec = subprocess.Popen(["bash", str(DECODE), "--unet", "127.0.0.1", "--port", str(port), "--model",
                                str(MODEL), "--threads", "1", "--out", str(out / "f-%05d.png"),
                                *transport[:1]],
                               env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 10:
            assert dec.poll() is None, stop(dec)
            time.sleep(0.2)
        files = sorted(out.glob("*.png"))
        assert len(files) >= 10, stop(dec)
        pics = [np.asarray(Image.open(f).convert("RGB")) for f in files[:10]]
        assert all(p.shape == (64, 64, 3) for p in pics)
        assert any(p.std() > 1 for p in pics)
    finally:
        if dec is not None:
            stop(dec)
        stop(unet)


def test_bad_arguments_are_named():
    for cmd, args, needle in [
        (UNET, ["--size", "60"], "--size"),
        (UNET, ["--port", "99999"], "--port"),
        (UNET, ["--send-queue", "x"], "--send-queue"),
        (UNET, ["--model", "/nowhere"], "/nowhere"),
        (UNET, ["--fp16-wire"], "--fp16-wire needs --zmq"),
        (DECODE, [], "--unet HOST is required"),
        (DECODE, ["--unet", "h", "--recv-queue", "x"], "--recv-queue"),
        (DECODE, ["--unet", "h", "--model", "/nowhere"], "vae_decoder"),
    ]:
        p = subprocess.run(["bash", str(cmd), *args], env=env(), capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and needle in p.stderr, (cmd.name, args, p.stderr)
    for cmd in (UNET, DECODE):
        p = subprocess.run(["bash", str(cmd), "--help"], env=env(), capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "Usage" in p.stdout
