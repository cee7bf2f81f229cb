"""A deterministic 'photo-like' test picture (landscape with a house) for demos and benchmarks."""

from __future__ import annotations

import numpy as np


def landscape(width: int = 512, height: int = 512, shift: float = 0.0) -> np.ndarray:
    """RGB8 [H, W, 3]; `shift` (pixels) moves the sun and the clouds, for short animated sequences."""
    from PIL import Image, ImageDraw, ImageFilter

    W, H = width, height
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    sky = np.stack([120 + 80 * yy / H, 170 + 50 * yy / H, 235 - 20 * yy / H], -1)
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    s = W / 512.0
    sx = 380 * s + shift
    d.ellipse([sx - 40 * s, 60 * s, sx + 40 * s, 140 * s], fill=(255, 236, 150))
    for cx, cy in ((120, 90), (250, 60), (420, 180)):
        cx = cx * s + 0.5 * shift
        for dx, r in ((-30, 22), (0, 30), (30, 22)):
            d.ellipse([cx + dx * s - r * s, cy * s - r * s, cx + dx * s + r * s, cy * s + r * s * 0.8],
                      fill=(245, 245, 250))
    d.polygon([(0, 330 * s), (120 * s, 200 * s), (230 * s, 320 * s), (330 * s, 230 * s), (512 * s, 340 * s),
               (512 * s, 400 * s), (0, 400 * s)], fill=(95, 105, 130))
    d.polygon([(80 * s, 270 * s), (120 * s, 200 * s), (160 * s, 265 * s)], fill=(240, 240, 245))
    d.rectangle([0, 360 * s, W, H], fill=(80, 150, 60))
    d.polygon([(230 * s, H), (280 * s, 380 * s), (300 * s, 380 * s), (330 * s, H)], fill=(170, 140, 100))
    # House.
    d.rectangle([300 * s, 300 * s, 430 * s, 400 * s], fill=(200, 80, 60))
    d.polygon([(290 * s, 300 * s), (365 * s, 245 * s), (440 * s, 300 * s)], fill=(90, 50, 40))
    d.rectangle([350 * s, 340 * s, 380 * s, 400 * s], fill=(70, 45, 30))
    d.rectangle([310 * s, 320 * s, 338 * s, 345 * s], fill=(180, 220, 250))
    d.rectangle([395 * s, 320 * s, 423 * s, 345 * s], fill=(180, 220, 250))
    # Trees.
    for tx, ty in ((60, 420), (150, 450), (470, 430)):
        d.rectangle([(tx - 6) * s, ty * s, (tx + 6) * s, (ty + 45) * s], fill=(90, 60, 30))
        d.ellipse([(tx - 35) * s, (ty - 60) * s, (tx + 35) * s, (ty + 15) * s], fill=(40, 110, 40))
    img = img.filter(ImageFilter.GaussianBlur(0.8 * s))
    arr = np.asarray(img).astype(np.int16)
    grain = np.random.default_rng(7).integers(-6, 7, arr.shape)
    return np.clip(arr + grain, 0, 255).astype(np.uint8)
