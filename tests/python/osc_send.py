#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Sends OSC messages to i2i-prompt the way TouchOSC, TouchDesigner or Max/MSP do
(python-osc, UDP), for the OSC test: osc_send.py PORT /address ARG ... [-- /address ...].
Arguments that parse as int or float are sent as such; `raw:TEXT` sends TEXT as a bare
UDP datagram (not OSC), to check that bad packets are counted."""

import socket
import sys

from pythonosc.udp_client import SimpleUDPClient


def value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main():
    port = int(sys.argv[1])
    client = SimpleUDPClient("127.0.0.1", port)
    words = sys.argv[2:]
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
            s.sendto(m[0][4:].encode(), ("127.0.0.1", port))
        else:
            client.send_message(m[0], [value(a) for a in m[1:]])


if __name__ == "__main__":
    main()
