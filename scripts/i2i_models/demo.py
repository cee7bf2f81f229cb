"""The demo model: small handcrafted networks in the real diffusers / optimum layout.

This is a demonstration model, not a trained diffusion model. It is built so that the StreamDiffusion
math runs on it unchanged and its output reacts visibly:

- VAE (AutoencoderKL-style config, scaling_factor 0.5): the encoder pools each 8x8 block to a latent of
  luma, two chroma channels and the block's luma contrast; the decoder upsamples (bilinear, in two stages)
  and renders it with a soft posterised, cel-shaded look and ink on strong edges.
- Text encoder (E = 768): each token has 16 handcrafted features (a three-stop palette in latent space,
  a weight); colour and mood words (red, blue, gold, neon, sunset, forest, ocean, ...) carry strong
  palettes, every other word a colour from a hash of its token id, stop words nothing.
- UNet (sample, int64 timestep, encoder_hidden_states): estimates the clean latent from the noisy one
  (edge-preserving denoising whose strength follows the noise level of the timestep), gradient-maps it to the
  prompt's palette with an amount that grows with the noise level (strength), and returns the implied
  noise eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t). The seed's noise survives as colour texture.
"""

from __future__ import annotations

import colorsys

import numpy as np
from onnx import TensorProto

from . import configs
from .clip_vocab import BOS_ID, EOS_ID
from .graph import Graph, save

E = 768
NF = 16  # handcrafted feature dims at the start of each hidden state
SCALING_FACTOR = 0.5
# Scaled latents hold [3 Y, 3 Cb, 3 Cr, 3 D] (Y, Cb, Cr of x in [-1, 1]; D = luma contrast of the block).
LAT_GAIN = 6.0
F_W = 9  # weight feature
INK_GAIN = 2.5
SHARPEN = 0.5
CONTRAST = 1.12
TINT = 0.5  # largest share of the palette per step
GUIDED_EPS = 0.5
SATURATION = 1.15
BANDS = 5

# YCbCr (BT.601) of RGB in [-1, 1].
RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCC2RGB = np.linalg.inv(RGB2YCC)

def _stops(mid, shadow=None, highlight=None):
    """Shadow, mid and highlight colours (sRGB 0..255) of a three-stop gradient map."""
    m = np.asarray(mid, dtype=np.float64)
    sh = m * 0.22 if shadow is None else np.asarray(shadow, dtype=np.float64)
    hl = m + (255.0 - m) * 0.72 if highlight is None else np.asarray(highlight, dtype=np.float64)
    return sh, m, hl


# Colour and mood words.
PALETTES = {
    "red": _stops((225, 30, 35)),
    "crimson": _stops((190, 15, 50)),
    "blue": _stops((35, 90, 230)),
    "green": _stops((40, 180, 60)),
    "gold": _stops((230, 170, 30), (70, 40, 0), (255, 245, 190)),
    "golden": _stops((230, 170, 30), (70, 40, 0), (255, 245, 190)),
    "yellow": _stops((240, 215, 30)),
    "orange": _stops((245, 130, 20)),
    "purple": _stops((140, 50, 200)),
    "violet": _stops((150, 70, 220)),
    "pink": _stops((245, 110, 170)),
    "magenta": _stops((220, 30, 200)),
    "cyan": _stops((20, 200, 230)),
    "teal": _stops((0, 150, 140)),
    "turquoise": _stops((40, 210, 200)),
    "brown": _stops((140, 85, 40)),
    "silver": _stops((165, 170, 180), (30, 32, 40), (250, 250, 255)),
    "neon": _stops((230, 0, 210), (25, 0, 60), (0, 255, 235)),
    "cyberpunk": _stops((200, 0, 220), (15, 0, 50), (0, 240, 255)),
    "vaporwave": _stops((190, 90, 230), (40, 10, 90), (120, 250, 255)),
    "synthwave": _stops((240, 40, 160), (30, 0, 70), (255, 200, 90)),
    "sunset": _stops((235, 90, 60), (50, 10, 70), (255, 215, 120)),
    "sunrise": _stops((245, 140, 110), (70, 40, 90), (255, 235, 170)),
    "forest": _stops((60, 140, 50), (8, 30, 12), (215, 240, 160)),
    "jungle": _stops((40, 160, 40), (0, 35, 15), (210, 255, 120)),
    "ocean": _stops((20, 120, 190), (0, 20, 60), (170, 245, 245)),
    "sea": _stops((30, 130, 190), (0, 25, 65), (180, 240, 250)),
    "underwater": _stops((0, 140, 150), (0, 20, 45), (150, 255, 220)),
    "fire": _stops((240, 90, 10), (60, 0, 0), (255, 240, 120)),
    "lava": _stops((220, 50, 0), (30, 0, 0), (255, 200, 60)),
    "ice": _stops((140, 190, 240), (20, 40, 90), (245, 250, 255)),
    "snow": _stops((190, 205, 230), (50, 65, 100), (255, 255, 255)),
    "winter": _stops((150, 175, 220), (25, 40, 80), (245, 250, 255)),
    "night": _stops((40, 50, 130), (0, 0, 20), (160, 180, 240)),
    "midnight": _stops((25, 30, 100), (0, 0, 10), (120, 140, 220)),
    "desert": _stops((215, 150, 80), (80, 40, 15), (255, 240, 200)),
    "autumn": _stops((210, 100, 20), (60, 15, 0), (255, 220, 120)),
    "spring": _stops((150, 210, 120), (30, 70, 40), (255, 225, 240)),
    "summer": _stops((80, 190, 220), (20, 60, 80), (255, 245, 160)),
    "sepia": _stops((160, 110, 70), (40, 22, 10), (250, 235, 200)),
    "vintage": _stops((170, 130, 100), (50, 35, 30), (245, 230, 200)),
    "pastel": _stops((230, 180, 220), (120, 110, 150), (255, 245, 235)),
    "monochrome": _stops((128, 128, 128), (10, 10, 10), (250, 250, 250)),
    "grayscale": _stops((128, 128, 128), (10, 10, 10), (250, 250, 250)),
    "noir": _stops((90, 90, 90), (0, 0, 0), (235, 235, 235)),
    "matrix": _stops((20, 180, 40), (0, 10, 0), (170, 255, 170)),
    "candy": _stops((250, 120, 190), (120, 30, 100), (255, 235, 245)),
    "toxic": _stops((150, 230, 0), (20, 40, 0), (240, 255, 150)),
    "dark": _stops((50, 50, 60), (0, 0, 0), (140, 140, 150)),
    "bright": _stops((210, 210, 200), (110, 110, 120), (255, 255, 250)),
    "rainbow": _stops((60, 200, 90), (110, 0, 170), (255, 230, 50)),
    "watercolor": _stops((120, 165, 195), (55, 65, 105), (250, 242, 222)),
    "watercolour": _stops((120, 165, 195), (55, 65, 105), (250, 242, 222)),
    "oil": _stops((170, 110, 50), (40, 25, 10), (250, 225, 170)),
    "impressionism": _stops((120, 160, 110), (50, 60, 90), (250, 230, 170)),
    "impressionist": _stops((120, 160, 110), (50, 60, 90), (250, 230, 170)),
    "pencil": _stops((140, 135, 125), (35, 33, 30), (248, 245, 238)),
    "sketch": _stops((140, 135, 125), (35, 33, 30), (248, 245, 238)),
    "charcoal": _stops((95, 95, 95), (10, 10, 10), (235, 232, 225)),
}
STRONG_WEIGHT = 4.0

STOP_WORDS = set("""
a an the of in on at with and or by to for from as into over under this that these those is are be it its
photo photograph picture image style very high quality detailed highly best masterpiece render rendering
art artwork digital trending hd hq uhd realistic photorealistic beautiful amazing award winning wallpaper
8k 4k looking view scene shot painting painted drawing illustration
""".split())


def _rgb_to_lat(rgb255) -> np.ndarray:
    x = np.asarray(rgb255, dtype=np.float64) / 255.0 * 2.0 - 1.0
    return LAT_GAIN * (RGB2YCC @ x)


def _hash01(i: int, salt: int) -> float:
    z = (i * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z ^= z >> 31
    z = (z * 0x94D049BB133111EB) & ((1 << 64) - 1)
    z ^= z >> 29
    return (z >> 11) / float(1 << 53)


def _palette_features(sh, mid, hl) -> np.ndarray:
    """Latent-space control points of the quadratic curve through sh (luma 0), mid (0.5) and hl (1)."""
    s, m, h = (_rgb_to_lat(c) for c in (sh, mid, hl))
    return np.concatenate([s, 2.0 * m - 0.5 * (s + h), h])


def token_features(vocab: list[str]) -> np.ndarray:
    """[49408, 16]: a three-stop palette (shadow, mid control, highlight) in scaled latent YCbCr, the
    token's weight, then small hash values."""
    feats = np.zeros((len(vocab), NF), dtype=np.float64)
    for i, tok in enumerate(vocab):
        if i in (BOS_ID, EOS_ID):
            continue
        word = tok[:-4] if tok.endswith("</w>") else tok
        for k in range(F_W + 1, NF):  # free dims: hash values, small
            feats[i, k] = (_hash01(i, k) - 0.5) * 0.2
        if not word.isalpha() or len(word) < 2 or not word.isascii():
            continue
        if word in STOP_WORDS:
            continue
        if tok.endswith("</w>") and word in PALETTES:
            feats[i, 0:9] = _palette_features(*PALETTES[word])
            feats[i, F_W] = STRONG_WEIGHT
            continue
        hue = _hash01(i, 1)
        sat = 0.45 + 0.4 * _hash01(i, 2)
        mid = np.array(colorsys.hls_to_rgb(hue, 0.5, sat)) * 255
        feats[i, 0:9] = _palette_features(*_stops(mid))
        feats[i, F_W] = 1.0
    return feats.astype(np.float32)


def text_encoder(vocab: list[str]) -> Graph:
    g = Graph("text_encoder")
    rng = np.random.default_rng(768)
    ids = g.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    f = g.op("Gather", [g.init("token_features", token_features(vocab)), ids], axis=0)  # [B,S,16]
    # Hidden state: the features in dims 0..15, a fixed random mix of them (plus position) elsewhere.
    proj = np.zeros((NF, E))
    proj[:, :NF] = np.eye(NF)
    proj[:, NF:] = rng.standard_normal((NF, E - NF)) * 0.3
    h = g.matmul(f, g.init("proj", proj))
    pos = np.zeros((77, E))
    pos[:, NF:] = rng.standard_normal((77, E - NF)) * 0.05
    seq = g.op("Slice", [g.op("Shape", [ids]), g.i64([1]), g.i64([2])])
    h = g.add(h, g.op("Slice", [g.init("position_embedding", pos), g.i64([0]), seq, g.i64([0])]))
    g.output(h, "last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", E])
    eos_pos = g.op("ArgMax", [g.cast(ids, TensorProto.FLOAT)], axis=1, keepdims=1)
    hot = g.op("Equal", [g.op("Range", [g.i64(0), g.op("Squeeze", [seq, g.i64([0])]), g.i64(1)]), eos_pos])
    hot = g.op("Unsqueeze", [g.cast(hot, TensorProto.FLOAT), g.i64([2])])
    g.output(g.op("ReduceSum", [g.mul(h, hot), g.i64([1])], keepdims=0), "pooler_output", TensorProto.FLOAT,
             ["batch_size", E])
    return g


def _gauss_kernel(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k2 = np.outer(k, k)
    return k2 / k2.sum()


def _blur(g: Graph, x, ch: int, sigma: float, radius: int):
    """Depthwise gaussian blur with reflected borders."""
    p = g.op("Pad", [x, g.i64([0, 0, radius, radius, 0, 0, radius, radius])], mode="reflect")
    w = np.tile(_gauss_kernel(sigma, radius)[None, None], (ch, 1, 1, 1))
    return g.conv(p, w, None, pad=0, group=ch, base="blur")


def _chan(g: Graph, x, start: int, end: int, axis: int = 1):
    return g.op("Slice", [x, g.i64([start]), g.i64([end]), g.i64([axis])])


def _bezier(g: Graph, p0, p1, p2, u):
    """Quadratic Bezier (1-u)^2 p0 + 2u(1-u) p1 + u^2 p2."""
    v = g.sub(g.const(1.0), u)
    return g.add(g.add(g.mul(g.mul(v, v), p0), g.mul(g.mul(g.mul(u, v), g.const(2.0)), p1)), g.mul(g.mul(u, u), p2))


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def unet() -> Graph:
    g = Graph("unet")
    x = g.input("sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    t = g.input("timestep", TensorProto.INT64, ["batch_size"])
    ehs = g.input("encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "sequence_length", E])
    abar = alphas_cumprod()
    tc = g.op("Clip", [t, g.i64(0), g.i64(999)])
    a = g.op("Reshape", [g.op("Gather", [g.init("sqrt_abar", np.sqrt(abar)), tc], axis=0), g.i64([-1, 1, 1, 1])])
    b = g.op("Reshape", [g.op("Gather", [g.init("sqrt_1m_abar", np.sqrt(1 - abar)), tc], axis=0),
                         g.i64([-1, 1, 1, 1])])
    r = g.div(b, a)  # noise level of x / a
    y = g.div(x, a)
    # Denoise: chroma (smooth in pictures) by a wide blur; luma and contrast by a guided filter of the
    # slightly blurred latent by itself (edge-preserving, its eps follows the noise level), plus the
    # residual detail only when the noise is low.
    lo = _blur(g, y, 4, 1.0, 2)
    wide = _blur(g, y, 4, 2.5, 5)
    r2 = g.mul(r, r)

    def box(v):
        return g.op("AveragePool", [v], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2], count_include_pad=0)

    m = box(lo)
    var = g.sub(box(g.mul(lo, lo)), g.mul(m, m))
    ga = g.div(var, g.add(var, g.add(g.mul(r2, g.const(GUIDED_EPS)), g.const(1e-3))))
    gb = g.sub(m, g.mul(ga, m))
    base = g.add(g.mul(box(ga), lo), box(gb))
    w_hi = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(r2, g.const(1 / 0.25 ** 2)))])
    luma = g.add(base, g.mul(w_hi, g.sub(y, lo)))
    den = g.op("Concat", [_chan(g, luma, 0, 1), _chan(g, wide, 1, 3), _chan(g, luma, 3, 4)], axis=1)
    # Prompt palette: weighted mean of the token features.
    f = g.op("Slice", [ehs, g.i64([0]), g.i64([NF]), g.i64([2])])  # [B,S,16]
    w = g.op("Relu", [g.op("Slice", [f, g.i64([F_W]), g.i64([F_W + 1]), g.i64([2])])])  # [B,S,1]
    sw = g.op("ReduceSum", [w, g.i64([1])], keepdims=1)  # [B,1,1]
    pal = g.div(g.op("ReduceSum", [g.mul(f, w), g.i64([1])], keepdims=1), g.add(sw, g.const(1e-6)))
    presence = g.div(sw, g.add(sw, g.const(0.5)))  # 0 for an empty prompt
    sh, mc, hl = (g.op("Reshape", [g.op("Slice", [pal, g.i64([k]), g.i64([k + 3]), g.i64([2])]),
                                   g.i64([-1, 3, 1, 1])]) for k in (0, 3, 6))
    presence = g.op("Reshape", [presence, g.i64([-1, 1, 1, 1])])
    # Gradient map of the denoised luma onto the palette.
    den3 = _chan(g, den, 0, 3)
    yn = g.op("Clip", [g.add(g.mul(_chan(g, den, 0, 1), g.const(0.5 / LAT_GAIN)), g.const(0.5)), g.const(0.0),
                       g.const(1.0)])
    mapped = _bezier(g, sh, mc, hl, yn)
    tau = g.mul(presence, g.mul(g.const(TINT), g.sub(g.const(1.0), g.op("Exp", [g.mul(r, g.const(-2.0))]))))
    styled = g.add(den3, g.mul(tau, g.sub(mapped, den3)))
    # Far from the data (large noise) the estimate leans on the prompt: the palette over a normalised
    # low-pass of the noisy latent.
    norm = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(r, g.const(0.12)))])
    yg = g.sigmoid(g.mul(g.mul(_chan(g, wide, 0, 1), norm), g.const(2.4 / LAT_GAIN)))
    gen_pal = _bezier(g, sh, mc, hl, yg)
    gen_neutral = g.op("Concat", [g.mul(g.sub(g.mul(yg, g.const(2.0)), g.const(1.0)), g.const(0.7 * LAT_GAIN)),
                                  g.mul(_chan(g, wide, 1, 3), norm)], axis=1)
    gen = g.add(gen_neutral, g.mul(presence, g.sub(gen_pal, gen_neutral)))
    trust = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(g.mul(r, r), g.const((0.2 / 0.5) ** 2)))])
    x0_3 = g.add(gen, g.mul(trust, g.sub(styled, gen)))
    x0 = g.op("Concat", [x0_3, _chan(g, den, 3, 4)], axis=1)
    eps = g.div(g.sub(x, g.mul(a, x0)), b)
    g.output(eps, "out_sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    return g


def vae_encoder() -> Graph:
    g = Graph("vae_encoder")
    x = g.input("sample", TensorProto.FLOAT, ["batch_size", 3, "height", "width"])
    k = LAT_GAIN / SCALING_FACTOR
    # Only two cheap full-resolution passes: block means of x and of x^2.
    m = g.op("AveragePool", [x], kernel_shape=[8, 8], strides=[8, 8])
    m2 = g.op("AveragePool", [g.mul(x, x)], kernel_shape=[8, 8], strides=[8, 8])
    ycc = g.conv(m, (RGB2YCC * k)[:, :, None, None], None, pad=0, base="rgb2ycc")
    var = g.op("Relu", [g.sub(m2, g.mul(m, m))])  # per-channel variance in the block
    contrast = g.op("Sqrt", [g.conv(var, (RGB2YCC[0:1] ** 2)[:, :, None, None] * 3.0, None, pad=0, base="var")])
    lat = g.op("Concat", [ycc, g.mul(contrast, g.const(k))], axis=1)
    g.output(lat, "latent_sample", TensorProto.FLOAT, ["batch_size", 4, "height_latent", "width_latent"])
    return g


def vae_decoder() -> Graph:
    g = Graph("vae_decoder")
    z = g.input("latent_sample", TensorProto.FLOAT, ["batch_size", 4, "height_latent", "width_latent"])
    k = SCALING_FACTOR / LAT_GAIN
    # Unsharp mask at latent resolution, so that the cubic upsampling gives crisper edges.
    ycc = g.mul(_chan(g, z, 0, 3), g.const(k))
    ycc = g.add(ycc, g.mul(g.sub(ycc, _blur(g, ycc, 3, 1.0, 2)), g.const(SHARPEN)))
    # Ink: edges of the luma at latent resolution, upsampled with the colours.
    yl = _chan(g, ycc, 0, 1)
    ypad = g.op("Pad", [yl, g.i64([0, 0, 1, 1, 0, 0, 1, 1])], mode="edge")
    sobel = np.array([[[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]], [[[-1, -2, -1], [0, 0, 0], [1, 2, 1]]]], np.float64)
    gxy = g.conv(ypad, sobel / 8.0, None, pad=0, base="sobel")
    edge = g.op("Sqrt", [g.op("ReduceSum", [g.mul(gxy, gxy), g.i64([1])], keepdims=1)])
    ink = g.op("Clip", [g.mul(g.sub(edge, g.const(0.05)), g.const(INK_GAIN)), g.const(0.0), g.const(1.0)])
    # The chroma's share of R, G, B, computed at latent resolution (YCbCr -> RGB is Y + M [Cb, Cr]).
    crgb = g.conv(_chan(g, ycc, 1, 3), YCC2RGB[:, 1:3, None, None] * SATURATION, None, pad=0, base="c2rgb")
    planes = g.op("Concat", [yl, ink, crgb], axis=1)
    # Two bilinear stages (x2 then x4): smoother than one x8 and far cheaper than cubic.
    up = g.op("Resize", [planes, "", g.const([1, 1, 2, 2], np.float32)], mode="linear",
              coordinate_transformation_mode="half_pixel")
    up = g.op("Resize", [up, "", g.const([1, 1, 4, 4], np.float32)], mode="linear",
              coordinate_transformation_mode="half_pixel")
    # Soft posterisation of the luma into 5 bands (a smooth staircase applied twice), blended with the
    # smooth luma, then darkened towards black on the ink.
    yl = g.mul(_chan(g, up, 0, 1), g.const(CONTRAST))
    u = g.mul(g.add(yl, g.const(1.0)), g.const(0.5 * BANDS))

    def stair(v):
        return g.sub(v, g.mul(g.op("Sin", [g.mul(v, g.const(2 * np.pi))]), g.const(1 / (2 * np.pi))))

    yq = g.sub(g.mul(stair(stair(u)), g.const(2.0 / BANDS)), g.const(1.0))
    ymix = g.add(g.mul(yl, g.const(0.45)), g.mul(yq, g.const(0.55)))
    ymix = g.sub(ymix, g.mul(_chan(g, up, 1, 2), g.add(ymix, g.const(1.0))))
    rgb = g.add(ymix, _chan(g, up, 2, 5))
    g.output(rgb, "sample", TensorProto.FLOAT, ["batch_size", 3, "height", "width"])
    return g


def write_demo(dest, vocab, merges, tok_cache) -> None:
    from .clip_vocab import write_tokenizer

    write_tokenizer(dest / "tokenizer", vocab, merges, pad="<|endoftext|>", files="slow+fast", cache=tok_cache)
    (dest / "model_index.json").write_text(configs.model_index("PNDMScheduler", "AutoencoderKL"))
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler/scheduler_config.json").write_text(configs.scheduler_config("pndm"))
    vae_cfg = configs.vae_kl_config(SCALING_FACTOR, 512, [4])
    cfgs = {
        "text_encoder": configs.text_encoder_config(E, 1, 1, E, "float32"),
        "unet": configs.unet_config(E, 64, [4], 1),
        "vae_encoder": vae_cfg,
        "vae_decoder": vae_cfg,
    }
    graphs = {"text_encoder": text_encoder(vocab), "unet": unet(), "vae_encoder": vae_encoder(),
              "vae_decoder": vae_decoder()}
    for comp, g in graphs.items():
        (dest / comp).mkdir(parents=True, exist_ok=True)
        save(g.model(f"i2i demo {comp}: handcrafted demonstration model, not a trained diffusion model"),
             dest / comp / "model.onnx")
        (dest / comp / "config.json").write_text(cfgs[comp])
    (dest / "README.txt").write_text(
        "i2i demo model: handcrafted small networks in the diffusers / optimum ONNX layout.\n"
        "It is a demonstration model, not a trained diffusion model: it recolours and cel-shades the input\n"
        "by the prompt's colour words. Generated by scripts/make_models.py.\n")
