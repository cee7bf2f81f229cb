#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Writes a short synthetic clip as numbered JPEGs (DIR/0000.jpg, DIR/0001.jpg, ...).

A landscape with motion and colour, made locally (nothing is downloaded): a sky whose hue
drifts, a sun crossing it, hills scrolling at two speeds, a bouncing ball and the frame
number. Used by scripts/demo.sh as the input of the design card pipeline.
"""

import argparse
import math
import sys
from pathlib import Path

try:
    from PIL import Image, ImageDraw
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("make-frames.py: Pillow is missing; run scripts/setup.sh or 'pip install pillow'")


def lerp(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def hsv(h, s, v):
    """HSV in [0, 1] to an RGB tuple in [0, 255]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def sky(size, top, bottom):
    column = Image.new("RGB", (1, size))
    column.putdata([lerp(top, bottom, y / max(size - 1, 1)) for y in range(size)])
    return column.resize((size, size))


def hills(draw, size, phase, base, amplitude, wavelength, colour):
    points = [(0, size)]
    for x in range(0, size + 8, 8):
        y = base + amplitude * math.sin((x + phase) * 2 * math.pi / wavelength)
        y += amplitude * 0.4 * math.sin((x + phase * 1.7) * 2 * math.pi / (wavelength * 0.45))
        points.append((x, y))
    points.append((size, size))
    draw.polygon(points, fill=colour)


def frame(k, count, size):
    t = k / max(count - 1, 1)
    s = size / 512
    img = sky(size, hsv((0.58 + 0.25 * t) % 1, 0.65, 0.95), hsv((0.08 + 0.1 * t) % 1, 0.45, 1.0))
    d = ImageDraw.Draw(img)

    sun_x = size * (0.1 + 0.8 * t)
    sun_y = size * (0.45 - 0.3 * math.sin(math.pi * t))
    r = 40 * s
    d.ellipse([sun_x - r, sun_y - r, sun_x + r, sun_y + r], fill=(255, 214, 90))

    hills(d, size, phase=k * 3 * s, base=size * 0.62, amplitude=30 * s, wavelength=300 * s,
          colour=(70, 120, 160))
    hills(d, size, phase=k * 8 * s, base=size * 0.78, amplitude=22 * s, wavelength=180 * s,
          colour=(40, 140, 70))

    # A ball bouncing along the ground, changing colour as it goes.
    bx = (k * 11 * s) % (size + 80 * s) - 40 * s
    by = size * 0.82 - abs(math.sin(k * 0.35)) * size * 0.35
    br = 28 * s
    d.ellipse([bx - br, by - br, bx + br, by + br], fill=hsv((k * 0.03) % 1, 0.85, 0.95),
              outline=(255, 255, 255), width=max(1, int(3 * s)))

    d.rectangle([8 * s, 8 * s, 120 * s, 34 * s], fill=(0, 0, 0))
    d.text((14 * s, 14 * s), f"frame {k:04d}", fill=(255, 255, 255))
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/frames", help="output folder (default out/frames)")
    ap.add_argument("--count", type=int, default=60, help="number of frames (default 60)")
    ap.add_argument("--size", type=int, default=512, help="width and height in pixels (default 512)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    ap.add_argument("--clear", action="store_true",
                    help="first remove the NNNN.jpg files already in the folder")
    args = ap.parse_args()
    if args.count < 1 or args.size < 16:
        ap.error("--count must be at least 1 and --size at least 16")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.clear:
        for old in out.glob("[0-9][0-9][0-9][0-9].jpg"):
            old.unlink()
    for k in range(args.count):
        frame(k, args.count, args.size).save(out / f"{k:04d}.jpg", quality=args.quality)
    print(f"make-frames.py: wrote {args.count} frames of {args.size}x{args.size} to "
          f"{out}/%04d.jpg")


if __name__ == "__main__":
    main()
