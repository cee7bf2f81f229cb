# SPDX-License-Identifier: MPL-2.0
"""i2i-web seen from seed 001's side, with the `websockets` package as its clients use it.

Images go in as seed 001's JSON messages, acks come back, the messages are relayed to the
other clients, published on ZeroMQ as [timestamp_ms, index, jpg], go through a real
`zmqmsgpacksrc ! jpegdec ! i2itransform model=models/demo ! zmqmsgpacksink` pipeline and come
back to WebSocket clients (JSON and binary) and MJPEG viewers. Bad input, floods, foreign
origins and missing tokens are refused with a message while everything else goes on.
"""

import asyncio
import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
import zmq
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from i2i_web_helpers import Holder, Web, pipeline, stop_process, wait_for


def image_bytes(fmt="JPEG", size=(256, 256), color=(200, 60, 40)):
    img = Image.new("RGB", size, color)
    # Some structure, so the transform has edges to work on.
    for x in range(0, size[0], 16):
        for y in range(size[1]):
            img.putpixel((x, y), (20, 200, 90))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def image_message(fmt="jpeg", ts=None, data=None):
    data = data if data is not None else image_bytes(fmt.upper())
    return json.dumps({
        "type": "image",
        "format": fmt,
        "data": base64.b64encode(data).decode(),
        "timestamp": ts if ts is not None else time.time(),
    })


async def recv_json(ws, timeout=10, skip_types=("stats",)):
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        if isinstance(msg, str):
            m = json.loads(msg)
            if m.get("type") not in skip_types:
                return m


@pytest.fixture
def web():
    w = Web()
    yield w
    w.stop()


def sub_socket(endpoint):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.linger = 0
    s.subscribe(b"")
    s.connect(endpoint)
    return s


def test_seed_001_ack_relay_and_publish(web):
    sub = sub_socket(web.publish)
    time.sleep(0.3)  # the SUB connection, before the first publish

    async def run():
        async with connect(web.ws) as producer, connect(web.ws) as consumer:
            sent = image_message("jpeg", ts=1700000000.5)
            await producer.send(sent)
            assert await recv_json(producer) == {"type": "ack", "status": "received"}
            # Relayed as it came, to the other client only.
            assert await asyncio.wait_for(consumer.recv(), 5) == sent
            png = image_message("png", ts=1700000001.0, data=image_bytes("PNG", (64, 48)))
            await producer.send(png)
            assert (await recv_json(producer))["type"] == "ack"
            assert await asyncio.wait_for(consumer.recv(), 5) == png
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(producer.recv(), 0.3)

    asyncio.run(run())
    assert sub.poll(5000)
    ts, index, jpg = msgpack.unpackb(sub.recv())
    assert (ts, index) == (1700000000500, 0)
    assert Image.open(io.BytesIO(jpg)).size == (256, 256)
    assert sub.poll(5000)
    ts, index, jpg = msgpack.unpackb(sub.recv())
    assert (ts, index) == (1700000001000, 1)
    converted = Image.open(io.BytesIO(jpg))
    assert (converted.format, converted.size) == ("JPEG", (64, 48))
    sub.close()


def test_seed_001_client_flow_register_ping_and_two_producers(web):
    """As seed 001's client.py runs: register as producer, read the confirmation, then one
    ack per image; two such producers at once each read only their own acks, and a
    registered consumer gets both streams. Both register before either streams: a client
    gets relayed images until it registers as a producer (docs/web.md)."""

    async def register_producer(ws):
        await ws.send(json.dumps({"type": "register", "client_type": "producer"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "registered" and reply["client_type"] == "producer"

    async def stream(ws, name, n):
        for i in range(n):
            await ws.send(image_message(ts=1700000000 + i))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply == {"type": "ack", "status": "received"}, (name, reply)
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"

    async def run():
        async with connect(web.ws) as consumer, connect(web.ws) as a, connect(web.ws) as b:
            await consumer.send(json.dumps({"type": "register", "client_type": "consumer"}))
            assert json.loads(await asyncio.wait_for(consumer.recv(), 5))["type"] == "registered"
            await asyncio.gather(register_producer(a), register_producer(b))
            await asyncio.gather(stream(a, "a", 10), stream(b, "b", 10))
            got = 0
            while got < 20:
                m = json.loads(await asyncio.wait_for(consumer.recv(), 5))
                assert m["type"] == "image"
                got += 1

    asyncio.run(run())


def test_round_trip_through_a_transform_pipeline():
    web = Web()
    gst = pipeline(web)
    try:
        async def run():
            async with connect(web.ws) as producer, \
                    connect(web.ws + "/ws?output=json&relay=0") as json_viewer, \
                    connect(web.ws + "/ws?output=binary&relay=0") as binary_viewer:
                sent_ts = set()
                got_json = got_binary = None
                deadline = time.monotonic() + 60
                while (got_json is None or got_binary is None) and time.monotonic() < deadline:
                    ts = round(time.time(), 3)
                    sent_ts.add(int(ts * 1000))
                    await producer.send(image_message("jpeg", ts=ts))
                    assert (await recv_json(producer))["type"] == "ack"
                    await asyncio.sleep(0.1)
                    for ws, kind in ((json_viewer, "json"), (binary_viewer, "binary")):
                        try:
                            while True:
                                m = await asyncio.wait_for(ws.recv(), 0.01)
                                if kind == "json" and isinstance(m, str):
                                    m = json.loads(m)
                                    if m["type"] == "image":
                                        got_json = m
                                if kind == "binary" and isinstance(m, bytes):
                                    got_binary = m
                        except asyncio.TimeoutError:
                            pass
                assert got_json is not None, "no output frame as seed-001 JSON within 60 s"
                assert got_binary is not None, "no output frame as binary within 60 s"
                assert got_json["format"] == "jpeg"
                # The capture time survives the pipeline.
                assert round(got_json["timestamp"] * 1000) in sent_ts
                out = Image.open(io.BytesIO(base64.b64decode(got_json["data"])))
                # The transform works at its model's size (512 x 512 for models/demo).
                assert out.size == (512, 512)
                ts, index, jpg = msgpack.unpackb(got_binary)
                assert ts in sent_ts and isinstance(index, int)
                assert Image.open(io.BytesIO(jpg)).size == (512, 512)
                # The transform changed the picture.
                inp = Image.open(io.BytesIO(image_bytes())).convert("RGB").resize((64, 64))
                small = out.convert("RGB").resize((64, 64))
                diff = sum(abs(a - b) for a, b in zip(inp.tobytes(), small.tobytes()))
                assert diff / (64 * 64 * 3) > 2

                # MJPEG: a multipart stream of JPEGs, for <img> tags and tools.
                def first_part():
                    with urllib.request.urlopen(web.http + "/stream.mjpg", timeout=10) as r:
                        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
                        head = b""
                        while b"\r\n\r\n" not in head:
                            head += r.read(1)
                        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                        return r.read(length)

                producer_task = asyncio.create_task(keep_sending(producer))
                part = await asyncio.to_thread(first_part)
                producer_task.cancel()
                assert Image.open(io.BytesIO(part)).size == (512, 512)

        asyncio.run(run())
        stats = json.load(urllib.request.urlopen(web.http + "/api/stats", timeout=5))
        assert stats["output-frames"] > 0 and stats["published"] > 0
        assert stats["rejected"] == 0
    finally:
        stop_process(gst)
        web.stop()


async def keep_sending(ws):
    while True:
        await ws.send(image_message())
        await asyncio.sleep(0.1)


def test_bad_input_is_answered_and_counted():
    web = Web("--max-image-bytes", "65536")
    bad = [
        ("{not json", "malformed JSON"),
        ('{"type": "video"}', 'unknown message type "video"'),
        ('{"type": "image", "format": "jpeg", "data": "%%%"}', "not base64"),
        (image_message("jpeg", data=b"plain text, not a picture"), "not a JPEG"),
        (image_message("png", data=b"\x89PNG\r\n\x1a\n broken"), "not a PNG"),
        (image_message("jpeg", data=b"\xff\xd8\xff" + bytes(70000)), "over the limit"),
    ]

    async def run():
        async with connect(web.ws) as sender, connect(web.ws) as bystander:
            for text, want in bad:
                await sender.send(text)
                m = await recv_json(sender)
                assert m["type"] == "error" and want in m["error"], (want, m)
                await asyncio.sleep(0.25)  # stay within the error budget (5 per second)
            # The sender is still served, the bystander saw only the good message.
            good = image_message()
            await sender.send(good)
            assert (await recv_json(sender))["type"] == "ack"
            assert await asyncio.wait_for(bystander.recv(), 5) == good
            # Binary garbage.
            await sender.send(b"\x01\x02\x03")
            m = await recv_json(sender)
            assert m["type"] == "error" and "binary message" in m["error"]
            # Far over the limit: the connection is closed with code 1009.
            await sender.send("x" * 400_000)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(sender.recv(), 5)
            assert closed.value.rcvd.code == 1009
            # The bystander still works.
            async with connect(web.ws) as other:
                await other.send(good)
                assert (await recv_json(other))["type"] == "ack"
                assert await asyncio.wait_for(bystander.recv(), 5) == good

    try:
        asyncio.run(run())
        stats = json.load(urllib.request.urlopen(web.http + "/api/stats", timeout=5))
        assert stats["rejected"] == len(bad) + 2
        assert stats["images-received"] == 2
    finally:
        web.stop()


def test_flood_is_dropped_for_the_flooder_only():
    web = Web("--max-rate", "20")
    try:
        async def run():
            async with connect(web.ws) as flooder, connect(web.ws) as calm:
                msg = image_message(data=image_bytes(size=(16, 16)))
                for _ in range(200):
                    await flooder.send(msg)
                errors = acks = 0
                try:
                    while True:
                        m = json.loads(await asyncio.wait_for(flooder.recv(), 1.0))
                        if m["type"] == "error":
                            assert "too many messages" in m["error"]
                            errors += 1
                        elif m["type"] == "ack":
                            acks += 1
                except asyncio.TimeoutError:
                    pass
                assert errors >= 1 and 20 <= acks < 100, (errors, acks)
                # The calm client is served at once.
                await calm.send(msg)
                assert (await recv_json(calm, skip_types=("stats", "image")))["type"] == "ack"

        asyncio.run(run())
        stats = json.load(urllib.request.urlopen(web.http + "/api/stats", timeout=5))
        assert stats["dropped-flood"] >= 100
    finally:
        web.stop()


def test_origin_and_token():
    web = Web("--token", "s3cret", "--allow-origin", "https://show.example")
    try:
        def status(url, origin=None):
            req = urllib.request.Request(url, headers={"Origin": origin} if origin else {})
            try:
                return urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as e:
                return e.code

        assert status(web.http + "/") == 401
        assert status(web.http + "/?token=wrong") == 401
        assert status(web.http + "/?token=s3cret") == 200
        assert status(web.http + "/api/stats?token=s3cret", "http://evil.example") == 403
        assert status(web.http + "/api/stats?token=s3cret", "https://show.example") == 200

        async def run():
            with pytest.raises(InvalidStatus) as e:
                async with connect(web.ws):
                    pass
            assert e.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as e:
                async with connect(web.ws + "/?token=s3cret", origin="http://evil.example"):
                    pass
            assert e.value.response.status_code == 403
            assert b"--allow-origin" in e.value.response.body
            # The page's own origin, and programs without an Origin, with the token.
            own = f"http://{web.host}:{web.port}"
            async with connect(web.ws + "/ws?token=s3cret", origin=own) as ws:
                await ws.send(image_message())
                assert (await recv_json(ws))["type"] == "ack"
            async with connect(web.ws + "/?token=s3cret") as ws:
                await ws.send(image_message())
                assert (await recv_json(ws))["type"] == "ack"

        asyncio.run(run())
        stats = json.load(urllib.request.urlopen(web.http + "/api/stats?token=s3cret", timeout=5))
        assert stats["refused-token"] == 3 and stats["refused-origin"] == 2
    finally:
        web.stop()


def test_controls_reach_the_settings_holder():
    holder = Holder("/prompt a quiet lake")
    web = Web(control=holder.control)
    try:
        async def run():
            async with connect(web.ws + "/ws?relay=0") as ws:
                await ws.send(json.dumps({"type": "control", "command": "/seed 5", "id": 1}))
                m = await recv_json(ws)
                assert m["id"] == 1 and m["ok"] and m["answer"].startswith("ok seq=")
                await ws.send(json.dumps({"type": "settings", "id": 2,
                                          "settings": {"prompt": "a red fox", "guidance-scale": 1.5}}))
                assert (await recv_json(ws))["ok"]
                await ws.send(json.dumps({"type": "control", "command": "/status", "id": 3}))
                m = await recv_json(ws)
                state = json.loads(m["answer"][m["answer"].index("{"):])
                assert state["prompt"] == "a red fox" and state["seed"] == 5
                assert state["guidance-scale"] == 1.5
                # Refused locally, with the holder's own words.
                await ws.send(json.dumps({"type": "control", "command": "/guidance 99", "id": 4}))
                m = await recv_json(ws)
                assert m["id"] == 4 and not m["ok"] and "guidance" in m["error"]
                await ws.send(json.dumps({"type": "control", "command": "/bogus", "id": 5}))
                m = await recv_json(ws)
                assert not m["ok"] and "bogus" in m["error"]

        asyncio.run(run())
    finally:
        web.stop()
        holder.stop()


def publish_output(port, stop, fps=20, noise_size=None):
    """Plays a pipeline's output: frames stamped now, on a PUB socket at `port`; with
    `noise_size`, big frames of noise (about 1 MB at 1024 x 1024)."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"tcp://127.0.0.1:{port}")
    if noise_size:
        buf = io.BytesIO()
        Image.frombytes("RGB", noise_size, os.urandom(noise_size[0] * noise_size[1] * 3)).save(buf, "JPEG")
        jpg = buf.getvalue()
    else:
        jpg = image_bytes()
    index = 0
    while not stop.is_set():
        pub.send(msgpack.packb([int(time.time() * 1000), index, jpg]))
        index += 1
        time.sleep(1 / fps)
    pub.close()


def test_i2i_stats_reads_the_browser_stream():
    import subprocess
    import threading

    from i2i_web_helpers import binary, env

    web = Web()
    stop = threading.Event()
    sender = threading.Thread(target=publish_output, args=(web.out_port, stop), daemon=True)
    sender.start()
    try:
        out = subprocess.run(
            [binary("i2i-stats"), "--endpoint", f"{web.ws}/ws", "--frames", "30", "--timeout", "30",
             "--json", "--min-fps", "5"],
            env=env(), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["frames"] == 30 and report["stopped_by"] == "frames"
        assert report["malformed"] == 0
        assert 5 < report["average_fps"] < 40
        # Consecutive indices: nothing lost on the way through i2i-web.
        assert report["indices"]["lost"] == 0, report["indices"]
        assert 0 <= report["latency_ms"]["p95"] < 2000
        # The same report as for a ZeroMQ endpoint, with the WebSocket as its source.
        assert report["source"].startswith(f"{web.ws}/ws")
    finally:
        stop.set()
        sender.join()
        web.stop()


def raw_viewer(web):
    """A WebSocket viewer that never reads after the handshake, with a small receive
    buffer: the slowest possible browser."""
    import socket

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    s.connect((web.host, web.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws?output=binary&relay=0 HTTP/1.1\r\nHost: {web.host}:{web.port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_a_slow_viewer_loses_only_its_own_frames():
    import threading

    web = Web()
    stop = threading.Event()
    # 0.6 MB frames at 20 fps: a viewer that does not read is behind within a second.
    sender = threading.Thread(target=publish_output, args=(web.out_port, stop, 20, (1024, 1024)),
                              daemon=True)
    slow = raw_viewer(web)
    try:
        async def run():
            async with connect(web.ws + "/ws?output=binary&relay=0", max_size=None) as fast:
                sender.start()
                indices = []
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    m = await asyncio.wait_for(fast.recv(), 5)
                    if isinstance(m, bytes):
                        indices.append(msgpack.unpackb(m)[1])
                # The fast viewer got the frames in order (all of them on a quiet machine;
                # a loaded one may make it skip a few of its own), while the slow one read
                # nothing and fell far behind.
                assert len(indices) > 30
                assert indices == sorted(set(indices))
                missed = indices[-1] - indices[0] + 1 - len(indices)
                assert missed <= max(3, len(indices) // 5), (missed, indices)

        asyncio.run(run())
        stats = json.load(urllib.request.urlopen(web.http + "/api/stats", timeout=5))
        # Nearly everything the slow viewer did not take is counted as its loss.
        assert stats["dropped-viewer"] > 20, stats
        assert stats["output-frames"] > 30
    finally:
        stop.set()
        if sender.is_alive():
            sender.join()
        slow.close()
        web.stop()


def test_https_and_wss_with_a_certificate(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (scripts/setup.sh installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    web = Web("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert web.http.startswith("https://") and web.ws.startswith("wss://")
        ctx = ssl.create_default_context(cafile=str(cert))
        page = urllib.request.urlopen(web.http + "/", context=ctx, timeout=10).read()
        assert b"i2i control room" in page
        # Plain HTTP on the TLS port gets no page.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{web.host}:{web.port}/", timeout=5).read()

        async def run():
            async with connect(web.ws + "/", ssl=ctx) as ws:
                await ws.send(image_message())
                assert await recv_json(ws) == {"type": "ack", "status": "received"}

        asyncio.run(run())
    finally:
        web.stop()

    # A missing or wrong key file is named.
    bad = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "target" / "release" / "i2i-web"),
         "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "none.pem")],
        capture_output=True, text=True, timeout=30,
    )
    assert bad.returncode == 2 and "--tls-key" in bad.stderr and "none.pem" in bad.stderr, bad.stderr


def test_corrupt_jpeg_data_does_not_stop_the_pipeline():
    """A JPEG whose header decodes but whose data is garbage passes i2i-web's header check
    (a full decode per frame would cost the CPU the transform needs); the pipeline's
    jpegdec copes, and the good frames after it still come out."""
    web = Web()
    gst = pipeline(web)
    good = image_bytes()
    sos = good.index(b"\xff\xda") + 20
    bad = good[:sos] + bytes((i * 37) % 256 for i in range(len(good) - sos))
    try:
        async def run():
            async with connect(web.ws) as producer, \
                    connect(web.ws + "/ws?output=json&relay=0") as viewer:
                # Wait for the pipeline: good frames until one comes out.
                deadline = time.monotonic() + 60
                while True:
                    assert time.monotonic() < deadline, "the pipeline gave no frame in 60 s"
                    await producer.send(image_message(data=good))
                    await recv_json(producer)
                    try:
                        m = await recv_json(viewer, timeout=0.2)
                        if m["type"] == "image":
                            break
                    except asyncio.TimeoutError:
                        pass
                for data in [bad] * 30 + [good] * 20:
                    await producer.send(image_message(data=data))
                    assert (await recv_json(producer))["type"] == "ack"
                    await asyncio.sleep(0.03)
                outputs = 0
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    try:
                        if (await recv_json(viewer, timeout=0.5))["type"] == "image":
                            outputs += 1
                    except asyncio.TimeoutError:
                        pass
                assert outputs >= 5, outputs

        asyncio.run(run())
        assert gst.poll() is None, gst.stderr.read()
    finally:
        stop_process(gst)
        web.stop()
