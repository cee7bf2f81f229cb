# SPDX-License-Identifier: MPL-2.0
"""What a stranger, a flood, a slow or idle client and a lying input cost i2i-web, sent
for real: decompression bombs over the WebSocket (a real 8192 x 8192 PNG of 196 KB, a JPEG
of a few hundred bytes declaring 8192 x 8192), a rebinding page's forged Host and Origin,
idle TCP connections past the connection cap, messages that never finish, pings from a
client that never reads, malformed frames, and a settings holder that stops answering while
clients keep sending controls. Each is refused or bounded, counted, and a normal client is
served meanwhile. All on 127.0.0.1.
"""

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import zlib

import msgpack
import pytest
import zmq
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from i2i_web_helpers import Holder, RawWs, Web, wait_for

MIB = 1024


def png_bomb(size=8192):
    """A valid size x size RGB PNG of one colour: about 196 KB for 8192 (201 MB decoded)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = bytes(1 + size * 3)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(size)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(w, h):
    """A JPEG of 16 x 16 pixels (a few hundred bytes) whose frame header says w x h."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, "JPEG", quality=50)
    j = bytearray(buf.getvalue())
    sof = j.index(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(j)


def small_jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(buf, "JPEG")
    return buf.getvalue()


def image_message(data, fmt="jpeg"):
    return json.dumps({"type": "image", "format": fmt,
                       "data": base64.b64encode(data).decode(), "timestamp": time.time()})


def play_output(port, stop, fps=20):
    """A pipeline's output on a PUB socket: small frames stamped now."""
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub.bind(f"tcp://127.0.0.1:{port}")
    jpg, index = small_jpeg(), 0
    while not stop.is_set():
        pub.send(msgpack.packb([int(time.time() * 1000), index, jpg]))
        index += 1
        time.sleep(1 / fps)
    pub.close()


async def count_frames(ws, seconds):
    """Output frames a binary viewer receives in `seconds`."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            m = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if isinstance(m, bytes):
            n += 1
    return n


def test_decompression_bombs_are_refused_from_their_headers():
    bomb = png_bomb()
    assert len(bomb) < 250_000
    tiny = jpeg_declaring(8192, 8192)
    assert len(tiny) < 1000
    web = Web()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(web.publish)
    stop = threading.Event()
    player = threading.Thread(target=play_output, args=(web.out_port, stop), daemon=True)
    player.start()
    try:
        base = web.memory_kib("VmRSS")

        async def run():
            async with connect(web.ws + "/ws?output=binary&relay=0") as viewer, \
                    connect(web.ws + "/ws?relay=0") as attacker:
                await count_frames(viewer, 1.0)  # the stream is flowing
                quiet = await count_frames(viewer, 2.0)

                async def attack():
                    errors = []
                    # 40 messages a second, within --max-rate: every one is looked at.
                    for i in range(20):
                        await attacker.send(image_message(bomb, "png"))
                        await attacker.send(tiny)  # a bare JPEG
                        await attacker.send(msgpack.packb([0, i, tiny]))  # the page's frame
                        await attacker.send(image_message(tiny))  # seed 001's message
                        await asyncio.sleep(0.1)
                    end = time.monotonic() + 20
                    while time.monotonic() < end:
                        try:
                            m = json.loads(await asyncio.wait_for(attacker.recv(), 0.5))
                            errors.append(m.get("error", ""))
                        except asyncio.TimeoutError:
                            if web.stats()["dropped-oversize"] >= 80:
                                break
                    return errors

                t0 = time.monotonic()
                attacked, errors = await asyncio.gather(count_frames(viewer, 2.0), attack())
                return quiet, attacked, errors, time.monotonic() - t0

        quiet, attacked, errors, took = asyncio.run(run())
        stats = web.stats()
        assert stats["dropped-oversize"] == 80, stats
        assert stats["images-received"] == 0 and stats["published"] == 0, stats
        # The refusals say what and why, from the header alone.
        assert any("PNG header declares 8192 x 8192" in e and "--max-pixels" in e for e in errors), errors
        assert any("JPEG header declares 8192 x 8192" in e for e in errors), errors
        assert took < 15, took  # decoding 20 of these took 24 s of CPU before
        # Nothing decoded: memory stays where it was (one bomb decoded took 588 MiB).
        grown = web.memory_kib("VmHWM") - base
        assert grown < 64 * MIB, f"i2i-web grew by {grown} KiB"
        # The viewer kept its rate (20 fps played) while the attack ran.
        assert attacked >= max(10, quiet * 0.6), (quiet, attacked)
        assert sub.poll(200) == 0, "a refused image was published"
    finally:
        stop.set()
        player.join()
        sub.close()
        web.stop()


def test_decode_work_is_bounded_per_client():
    """Images within --max-pixels still cost decoding (here or in the pipeline's jpegdec):
    each client may send --max-pixel-rate pixels a second, a calm client is not affected."""
    web = Web("--max-pixel-rate", str(3840 * 2160 * 2))
    uhd = jpeg_declaring(3840, 2160)
    try:
        async def run():
            async with connect(web.ws + "/ws?relay=0") as greedy, \
                    connect(web.ws + "/ws?relay=0") as calm:
                for _ in range(40):
                    await greedy.send(uhd)
                await calm.send(image_message(small_jpeg()))
                reply = json.loads(await asyncio.wait_for(calm.recv(), 10))
                assert reply == {"type": "ack", "status": "received"}
                errors = []
                while True:
                    try:
                        errors.append(json.loads(await asyncio.wait_for(greedy.recv(), 1))["error"])
                    except asyncio.TimeoutError:
                        break
                return errors

        errors = asyncio.run(run())
        stats = wait_for(lambda: (lambda s: s if s["dropped-pixel-rate"] + s["images-received"] >= 41 else None)(
            web.stats()), 10, "all 41 images counted")
        # A burst of one second's budget passes, the rest is dropped and said.
        assert 2 <= stats["images-received"] - 1 <= 8, stats
        assert stats["dropped-pixel-rate"] >= 30, stats
        assert any("--max-pixel-rate" in e for e in errors), errors
    finally:
        web.stop()


def test_dns_rebinding_host_is_refused():
    """A page on rebind.evil.example that points its name at 127.0.0.1 sends that name as
    Host and as Origin: refused without a token, whatever the Origin says."""
    holder = Holder("/prompt a quiet lake")
    web = Web(control=holder.control)
    allowed = Web("--allowed-host", "rebind.evil.example", control=holder.control)
    try:
        def forged(w):
            return dict(host=w.host, port=w.port,
                        origin=f"http://rebind.evil.example:{w.port}")

        async def run():
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://rebind.evil.example:{web.port}/ws", **forged(web)):
                    pass
            assert e.value.response.status_code == 403
            assert b"--allowed-host rebind.evil.example" in e.value.response.body
            # The page itself and the counters are refused too (a rebinding page reads them).
            r = RawWs(web, "/", host=f"rebind.evil.example:{web.port}")
            assert r.status == 403
            r.close()
            # Named with --allowed-host (a reverse proxy's public name), the same is accepted.
            async with connect(f"ws://rebind.evil.example:{allowed.port}/ws?relay=0",
                               **forged(allowed)) as ws:
                await ws.send(json.dumps({"type": "control", "command": "/status", "id": 1}))
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert m["ok"] and '"a quiet lake"' in m["answer"], m
            # This machine's own names still work.
            async with connect(f"ws://localhost:{web.port}/ws?relay=0", host=web.host,
                               port=web.port, origin=f"http://localhost:{web.port}") as ws:
                await ws.send(json.dumps({"type": "control", "command": "/status", "id": 2}))
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert m["ok"] and '"a quiet lake"' in m["answer"], m

        asyncio.run(run())
        assert web.stats()["refused-host"] == 2
    finally:
        web.stop()
        allowed.stop()
        holder.stop()


def test_token_is_needed_with_any_host():
    web = Web("--token", "s3cret")
    try:
        async def run():
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://rebind.evil.example:{web.port}/ws", host=web.host,
                                   port=web.port):
                    pass
            assert e.value.response.status_code == 401
            # With the token any name is accepted: a rebinding page does not know it.
            async with connect(f"ws://show.example:{web.port}/ws?token=s3cret&relay=0",
                               host=web.host, port=web.port) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"

        asyncio.run(run())
    finally:
        web.stop()


def test_connection_cap_and_idle_connections():
    """Idle TCP connections fill the cap: the next one gets a 503 that names the option, the
    refusal is logged, and the idle ones are closed after --idle-timeout, freeing the slots."""
    web = Web("--max-connections", "6", "--idle-timeout", "1500")
    idle = []
    try:
        for _ in range(6):
            s = socket.create_connection((web.host, web.port))
            idle.append(s)
        time.sleep(0.3)
        s = socket.create_connection((web.host, web.port))
        s.settimeout(5)
        s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        s.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"--max-connections" in answer
        # The idle ones are closed by the server within the idle timeout (and some slack).
        for s in idle:
            s.settimeout(10)
            assert s.recv(1) == b""
        stats = wait_for(lambda: web.stats(), 10, "a free slot")
        assert stats["refused-connections"] >= 1, stats
    finally:
        for s in idle:
            s.close()
        err = web.stop()
    assert "--max-connections" in err, err


def test_idle_websocket_is_closed_and_a_live_one_kept():
    """A client that answers no ping is closed with 1008 and the reason; one that answers
    (the websockets package does, as browsers do) stays although it sends nothing."""
    web = Web("--idle-timeout", "1500")
    try:
        mute = RawWs(web)
        assert mute.status == 101

        async def run():
            async with connect(web.ws + "/ws?relay=0", ping_interval=None) as quiet:
                closed = await asyncio.to_thread(mute.close_frame, 15)
                assert closed and closed[0] == 1008 and "--idle-timeout" in closed[1], closed
                await asyncio.sleep(1.0)
                # Answered the server's pings: still open, and served.
                await quiet.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(quiet.recv(), 5))["type"] == "pong"

        asyncio.run(run())
        assert web.stats()["closed-idle"] == 1
    finally:
        web.stop()


def test_messages_that_never_finish_are_bounded():
    """30 connections each announce a message near --max-message-size and send half of it:
    they are closed with 1008 after --message-timeout, i2i-web's memory stays within the
    bound, and a larger announced message is refused at once with 1009."""
    limit = 1 << 20
    web = Web("--max-message-size", str(limit), "--message-timeout", "1500",
              "--max-connections", "40")
    conns = []
    try:
        base = web.memory_kib("VmRSS")
        half = bytes(limit // 2)
        for _ in range(30):
            c = RawWs(web)
            assert c.status == 101
            c.send(RawWs.frame(0x2, half, length=limit - 16))
            conns.append(c)
        peak = web.memory_kib("VmHWM") - base
        for c in conns:
            closed = c.close_frame(15)
            assert closed and closed[0] == 1008 and "--message-timeout" in closed[1], closed
        big = RawWs(web)
        big.send(RawWs.frame(0x2, b"", length=limit + 1))
        closed = big.close_frame(5)
        assert closed and closed[0] == 1009 and "--max-message-size" in closed[1], closed
        big.close()
        assert web.stats()["closed-slow"] == 30
        # Each holds at most its half message: 30 x 0.5 MiB, with room for buffers.
        assert peak < 30 * 512 + 48 * MIB, f"{peak} KiB"
    finally:
        for c in conns:
            c.close()
        web.stop()


def test_pings_from_a_client_that_never_reads():
    """Pings count toward --max-rate; their pongs do not pile up for a client that never
    reads (tungstenite keeps one, the write buffer has room for one message), and the client
    is dropped after --write-timeout. Meanwhile a viewer gets its frames."""
    web = Web("--max-message-size", "65536", "--write-timeout", "2000")
    stop = threading.Event()
    player = threading.Thread(target=play_output, args=(web.out_port, stop), daemon=True)
    player.start()
    try:
        base = web.memory_kib("VmRSS")
        flooder = RawWs(web, rcvbuf=4096)
        ping = RawWs.frame(0x9, bytes(125))
        burst = ping * 2000

        def flood():
            sent = 0
            try:
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    flooder.send(burst)
                    sent += 2000
            except OSError:
                pass  # dropped by i2i-web
            return sent

        async def run():
            async with connect(web.ws + "/ws?output=binary&relay=0") as viewer:
                await count_frames(viewer, 0.5)
                sent, frames = await asyncio.gather(asyncio.to_thread(flood),
                                                    count_frames(viewer, 4))
                return sent, frames

        sent, frames = asyncio.run(run())
        grown = web.memory_kib("VmHWM") - base
        stats = wait_for(lambda: (lambda s: s if s["closed-slow"] >= 1 else None)(web.stats()),
                         15, "the flooder dropped after --write-timeout")
        assert sent > 20_000, sent
        assert stats["dropped-flood"] > 0, stats
        # Before: every pong stayed queued (2.4 M pings took 297 MiB).
        assert grown < 32 * MIB, f"{grown} KiB after {sent} pings"
        assert frames >= 40, frames  # 20 fps for 4 s
    finally:
        stop.set()
        player.join()
        web.stop()


def test_protocol_errors_close_with_their_own_codes():
    web = Web("--max-message-size", "65536")
    cases = [
        ("an unmasked frame", RawWs.frame(0x1, b'{"type":"ping"}', mask=False), 1002, "protocol"),
        ("reserved bits", RawWs.frame(0x1, b"{}", rsv=4), 1002, "protocol"),
        ("a reserved opcode", RawWs.frame(0x3, b"x"), 1002, "protocol"),
        ("a fragmented ping", RawWs.frame(0x9, b"x", fin=False), 1002, "protocol"),
        ("invalid UTF-8", RawWs.frame(0x1, b'{"type": "\xff\xfe"}'), 1007, "UTF-8"),
        ("a message over the limit", RawWs.frame(0x2, bytes(70000)), 1009, "--max-message-size"),
    ]
    try:
        for what, frame, code, words in cases:
            c = RawWs(web)
            c.send(frame)
            closed = c.close_frame(10)
            c.close()
            assert closed is not None, what
            assert closed[0] == code and words in closed[1], (what, closed)
        # Others are served as before.
        c = RawWs(web)
        c.send(RawWs.frame(0x1, b'{"type":"ping"}'))
        op, payload = c.recv_frame()
        assert op == 0x1 and json.loads(payload)["type"] == "pong"
        c.close()
        assert web.stats()["closed-protocol"] == len(cases)
    finally:
        web.stop()


def test_controls_with_the_holder_down_are_answered_at_once_and_never_replayed():
    holder = Holder("/prompt a quiet lake")
    web = Web(control=holder.control)
    stop = threading.Event()
    try:
        async def control(ws, command, i):
            await ws.send(json.dumps({"type": "control", "command": command, "id": i}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if m.get("type") == "control" and m.get("id") == i:
                    return m

        async def chatty(k):
            async with connect(web.ws + "/ws?relay=0") as ws:
                i = 0
                while not stop.is_set():
                    i += 1
                    # A slider dragged: 20 changes a second, within --max-rate.
                    await control(ws, f"/seed {1000 + 100 * k + i % 100}", i)
                    await asyncio.sleep(0.05)

        async def run():
            async with connect(web.ws + "/ws?relay=0") as operator:
                assert (await control(operator, "/seed 7", 1))["ok"]
                holder.stop()
                tasks = [asyncio.create_task(chatty(k)) for k in range(10)]
                # The first control finds the holder gone within its 3 s.
                await asyncio.sleep(5.0)
                t0 = time.monotonic()
                m = await control(operator, "/prompt the operator's prompt", 2)
                took = time.monotonic() - t0
                stop.set()
                await asyncio.gather(*tasks)
                return m, took

        m, took = asyncio.run(run())
        assert not m["ok"] and "does not answer" in m["error"] and "not sent" in m["error"], m
        assert took < 2.5, took  # 31 s before
        stats = web.stats()
        assert stats["controls-not-sent"] > 10, stats

        # The holder comes back (fresh state): nothing sent while it was away arrives.
        back = Holder("/prompt a fresh start", ports_of=holder)
        try:
            async def status():
                async with connect(web.ws + "/ws?relay=0") as ws:
                    m = await control(ws, "/status", 3)
                    return m if m["ok"] else None

            m = wait_for(lambda: asyncio.run(status()), 30, "the holder answering again")
            time.sleep(2.0)
            m = asyncio.run(status())
            state = json.loads(m["answer"][m["answer"].index("{"):])
            assert state["prompt"] == "a fresh start", state
            assert state.get("seed") in (None, 7) or state["seed"] < 1000, state
        finally:
            back.stop()
    finally:
        stop.set()
        web.stop()
        holder.stop()


def test_startup_says_what_listens_where():
    web = Web("--publish", "tcp://127.0.0.1:*")
    try:
        assert web.startup.count("this machine only") == 2, web.startup
        assert "no token" in web.startup
    finally:
        web.stop()
    web = Web("--publish", "tcp://0.0.0.0:*", "--token", "t0k")
    try:
        assert "any machine that reaches the port receives the camera" in web.startup, web.startup
        assert "token required" in web.startup
    finally:
        web.stop()
