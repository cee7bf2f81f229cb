#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Embedding i2itransform in a Python program (GStreamer's gi bindings): test frames
through the transform, the prompt changed while the pipeline plays, and its stats read off
the bus.

Run it with the system interpreter, which has gi (python3-gi, see docs/transport.md,
"Which Python"), after `. .deps/env.sh` or with the plugins linked by scripts/setup.sh:

    /usr/bin/python3 examples/live_prompt.py models/demo 40
"""
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

FIRST_PROMPT = "a watercolor landscape"
SECOND_PROMPT = "an oil painting of a harbour at night"


def main():
    Gst.init(None)
    model = sys.argv[1] if len(sys.argv) > 1 else "models/demo"
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 40

    pipeline = Gst.parse_launch(
        # The test source plays in real time, as a camera would.
        f"videotestsrc num-buffers={frames} is-live=true "
        "! video/x-raw,width=256,height=256,framerate=15/1 "
        "! i2itransform name=transform width=256 height=256 stats-interval=500 ! fakesink")
    transform = pipeline.get_by_name("transform")
    # Properties can also be set from Python, before or while the pipeline plays.
    transform.set_property("model", model)
    transform.set_property("prompt", FIRST_PROMPT)

    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    changed = False
    failed = None
    while True:
        msg = bus.timed_pop(Gst.CLOCK_TIME_NONE)
        if msg.type == Gst.MessageType.EOS:
            break
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            failed = f"{err.message}: {debug}"
            break
        s = msg.get_structure() if msg.type == Gst.MessageType.ELEMENT else None
        if s is None:
            continue
        if s.get_name() == "i2itransform-stats":
            n = {f: s.get_value(f) for f in ("frames-in", "frames-out", "dropped")}
            print(f"stats: {n['frames-in']} frames in, {n['frames-out']} out, "
                  f"{n['dropped']} dropped, {s.get_value('avg-inference-ms'):.0f} ms per batch",
                  flush=True)
            # Change the prompt once frames flow: it applies at the next batch.
            if not changed and n["frames-out"] > 0:
                transform.set_property("prompt", SECOND_PROMPT)
                changed = True
                print("prompt changed", flush=True)
        elif s.get_name() == "i2i-settings-applied":
            # What the transform applied, and from which frame on.
            print(f"frame {s.get_value('frame-index')}: now \"{s.get_value('prompt')}\"",
                  flush=True)
    pipeline.set_state(Gst.State.NULL)
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
