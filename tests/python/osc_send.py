#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Sends OSC messages to i2i-prompt the way TouchOSC, TouchDesigner or Max/MSP do
(python-osc, UDP).

    osc_send.py PORT /address ARG ... [-- /address ...]
        Arguments that parse as int or float are sent as such; `raw:TEXT` sends TEXT as a
        bare UDP datagram (not OSC), to check that bad packets are counted.
    osc_send.py PORT --flood SECONDS [--state ENDPOINT] [--host HOST] [--from ADDR]
        Sends /seed 1, /seed 2, ... as fast as it can for SECONDS (a fader at full speed,
        or a stranger), then one last /seed; with --state, subscribes to the holder's
        state socket meanwhile and reports what the holder made of it: changes applied
        per second (the snapshots' seq), snapshots and bytes published per second, and
        whether the last value arrived.
"""

import argparse
import socket
import sys
import threading
import time

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient


def value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def send_words(port, words, host="127.0.0.1"):
    client = SimpleUDPClient(host, port)
    messages, current = [], []
    for w in words:
        if w == "--":
            messages.append(current)
            current = []
        else:
            current.append(w)
    if current:
        messages.append(current)
    for m in messages:
        if m[0].startswith("raw:"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(m[0][4:].encode(), (host, port))
        else:
            client.send_message(m[0], [value(a) for a in m[1:]])


def seed_packet(n):
    b = OscMessageBuilder(address="/seed")
    b.add_arg(n)
    return b.build().dgram


class StateCounter(threading.Thread):
    """Counts the holder's state snapshots (and their bytes) on its PUB socket."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        import zmq  # only the flood needs pyzmq

        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"i2i-state")
        self.sock.setsockopt(zmq.RCVTIMEO, 200)
        self.sock.connect(endpoint)
        self.events = []  # (time, bytes, seq, seed)
        self.running = True

    def run(self):
        import json

        import zmq

        while self.running:
            try:
                frames = self.sock.recv_multipart()
            except zmq.Again:
                continue
            snap = json.loads(frames[1])
            self.events.append((time.monotonic(), sum(map(len, frames)), snap["seq"],
                                snap["settings"].get("seed")))


def flood(args):
    counter = None
    if args.state:
        counter = StateCounter(args.state)
        counter.start()
        deadline = time.monotonic() + 5
        while not counter.events and time.monotonic() < deadline:
            time.sleep(0.05)
        if not counter.events:
            sys.exit(f"no state snapshot from {args.state} within 5 s")
    packets = [seed_packet(n) for n in range(1, 1001)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.source, 0))
    target = (args.host, args.port)
    start = time.monotonic()
    end = start + args.flood
    sent = 0
    while time.monotonic() < end:
        for p in packets[:100]:
            s.sendto(p, target)
        packets = packets[100:] + packets[:100]
        sent += 100
    last = 424242
    s.sendto(seed_packet(last), target)
    took = time.monotonic() - start
    print(f"sent {sent + 1} OSC messages in {took:.2f} s: {sent / took:.0f}/s")
    if counter is None:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e[3] == last for e in counter.events):
        time.sleep(0.05)
    counter.running = False
    window = [e for e in counter.events if start <= e[0] <= start + took]
    arrived = any(e[3] == last for e in counter.events)
    if len(window) >= 2:
        span = window[-1][0] - window[0][0] or took
        changes = window[-1][2] - window[0][2]
        print(f"holder, during the flood: {changes / span:.0f} changes applied/s, "
              f"{len(window) / span:.0f} snapshots/s, {sum(e[1] for e in window) / span:.0f} bytes/s published")
    else:
        print(f"holder, during the flood: {len(window)} snapshots")
    print(f"last value (seed {last}) {'arrived' if arrived else 'never arrived'}")


def main():
    if "--flood" not in sys.argv:
        send_words(int(sys.argv[1]), sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("--flood", type=float, required=True, help="seconds")
    p.add_argument("--state", help="the holder's state endpoint, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--from", dest="source", default="0.0.0.0", help="source address")
    flood(p.parse_args())


if __name__ == "__main__":
    main()
