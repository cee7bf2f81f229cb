#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Idle connections against the settings holder (the figure in docs/settings.md,
"Security and limits"): starts `i2i-prompt serve` under a descriptor limit (prlimit),
opens COUNT idle TCP connections to each of its two ports and keeps them open, then
times an operator's one-shot command and a late subscriber's first snapshot.

    holder_idle_peers.py [--bin target/release/i2i-prompt] [--limit 1024] [--count 1100]
"""

import argparse
import os
import re
import socket
import subprocess
import time

import zmq


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/i2i-prompt")
    p.add_argument("--limit", type=int, default=1024, help="the holder's descriptor limit")
    p.add_argument("--count", type=int, default=1100, help="idle connections per port")
    a = p.parse_args()
    holder = subprocess.Popen(
        ["prlimit", f"--nofile={a.limit}:{a.limit}", a.bin, "serve", "--osc", "off",
         "--state-bind", "tcp://127.0.0.1:*", "--control-bind", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stderr.readline()
        state = re.search(r"settings on tcp://([\d.:]+)", line).group(1)
        control = re.search(r"commands on tcp://([\d.:]+)", line).group(1)
        idle = []
        start = time.monotonic()
        for addr in (state, control):
            host, port = addr.split(":")
            for _ in range(a.count):
                c = socket.socket()
                c.settimeout(3)
                try:
                    c.connect((host, int(port)))
                except OSError:
                    c.close()
                    break
                idle.append(c)
        fds = lambda: len(os.listdir(f"/proc/{holder.pid}/fd"))  # noqa: E731
        print(f"{len(idle)} idle connections opened in {time.monotonic() - start:.1f} s; "
              f"the holder holds {fds()} descriptors (limit {a.limit})")
        t = time.monotonic()
        r = subprocess.run([a.bin, "--endpoint", f"tcp://{control}", "--timeout-ms", "15000",
                            "--report-ms", "0", "/seed 5"], capture_output=True, text=True)
        answer = r.stdout.strip() or r.stderr.strip()[:120]
        print(f"operator: exit {r.returncode} after {time.monotonic() - t:.2f} s: {answer}")
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"i2i-state")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://{state}")
        t = time.monotonic()
        got = sub.poll(15000)
        print(f"late subscriber: {'a snapshot' if got else 'nothing'} after {time.monotonic() - t:.2f} s")
        for c in idle:
            c.close()
    finally:
        holder.terminate()
        holder.wait(timeout=10)


if __name__ == "__main__":
    main()
