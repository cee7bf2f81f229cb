"""The demo model: small handcrafted networks in the real diffusers / optimum layout.

This is a demonstration model, not a trained diffusion model. It is built so that the StreamDiffusion
math runs on it unchanged and its output reacts visibly:

- VAE (AutoencoderKL-style config, scaling_factor 0.5): the encoder pools each 8x8 block to a latent of
  luma, two chroma channels and the block's luma contrast; the decoder upsamples (bilinear, in two stages) and renders it
  with a soft posterised, cel-shaded look.
- Text encoder (E = 768): each token has 16 handcrafted features (a shadow and a highlight colour in latent
  space, a weight); colour and mood words (red, blue, gold, neon, sunset, forest, ocean, ...) carry strong
  palettes, every other word a colour from a hash of its token id, stop words nothing.
- UNet (sample, int64 timestep, encoder_hidden_states): estimates the clean latent from the noisy one
  (denoising by a blur whose weight follows the noise level of the timestep), gradient-maps it to the
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
F_W = 6  # weight feature
INK_GAIN = 2.5
SHARPEN = 0.5
CONTRAST = 1.12

# YCbCr (BT.601) of RGB in [-1, 1].
RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCC2RGB = np.linalg.inv(RGB2YCC)

# Shadow and highlight colours (sRGB 0..255) of colour and mood words.
PALETTES = {
    "red": ((90, 0, 15), (255, 95, 75)),
    "crimson": ((70, 0, 20), (240, 60, 80)),
    "blue": ((0, 20, 85), (110, 175, 255)),
    "green": ((0, 50, 15), (150, 235, 110)),
    "gold": ((90, 50, 0), (255, 215, 95)),
    "golden": ((90, 50, 0), (255, 215, 95)),
    "yellow": ((100, 80, 0), (255, 245, 120)),
    "orange": ((110, 30, 0), (255, 175, 60)),
    "purple": ((40, 0, 75), (205, 135, 255)),
    "violet": ((45, 0, 80), (215, 150, 255)),
    "pink": ((110, 20, 65), (255, 175, 215)),
    "magenta": ((90, 0, 80), (255, 110, 240)),
    "cyan": ((0, 60, 80), (130, 250, 255)),
    "teal": ((0, 55, 60), (110, 230, 210)),
    "turquoise": ((0, 70, 80), (120, 240, 225)),
    "brown": ((50, 25, 5), (210, 160, 110)),
    "silver": ((60, 65, 75), (235, 240, 250)),
    "neon": ((110, 0, 150), (20, 255, 235)),
    "cyberpunk": ((90, 0, 130), (0, 235, 255)),
    "vaporwave": ((80, 20, 140), (255, 150, 220)),
    "synthwave": ((60, 0, 110), (255, 100, 200)),
    "sunset": ((90, 15, 85), (255, 170, 65)),
    "sunrise": ((110, 50, 90), (255, 210, 130)),
    "forest": ((10, 45, 15), (175, 225, 120)),
    "jungle": ((0, 50, 20), (160, 240, 90)),
    "ocean": ((0, 30, 75), (95, 225, 235)),
    "sea": ((0, 35, 80), (110, 215, 235)),
    "underwater": ((0, 30, 60), (80, 230, 200)),
    "fire": ((85, 0, 0), (255, 225, 90)),
    "lava": ((60, 0, 0), (255, 140, 30)),
    "ice": ((35, 65, 120), (235, 248, 255)),
    "snow": ((70, 90, 130), (250, 252, 255)),
    "winter": ((40, 60, 110), (230, 240, 255)),
    "night": ((5, 5, 40), (110, 130, 210)),
    "midnight": ((0, 0, 30), (80, 90, 180)),
    "desert": ((110, 60, 20), (250, 220, 160)),
    "autumn": ((80, 20, 0), (250, 185, 60)),
    "spring": ((40, 95, 45), (255, 210, 230)),
    "summer": ((30, 90, 120), (255, 235, 130)),
    "sepia": ((60, 35, 15), (240, 220, 180)),
    "vintage": ((70, 45, 30), (240, 225, 190)),
    "pastel": ((150, 130, 175), (255, 238, 242)),
    "monochrome": ((15, 15, 15), (240, 240, 240)),
    "grayscale": ((15, 15, 15), (240, 240, 240)),
    "noir": ((0, 0, 0), (215, 215, 215)),
    "matrix": ((0, 15, 0), (120, 255, 120)),
    "candy": ((150, 40, 110), (255, 200, 235)),
    "toxic": ((30, 60, 0), (200, 255, 40)),
    "dark": ((0, 0, 5), (100, 100, 115)),
    "bright": ((110, 110, 120), (255, 255, 250)),
    "rainbow": ((120, 0, 160), (255, 235, 60)),
}
STRONG_WEIGHT = 4.0

STOP_WORDS = set("""
a an the of in on at with and or by to for from as into over under this that these those is are be it its
photo photograph picture image style very high quality detailed highly best masterpiece render rendering
art artwork digital trending hd hq uhd realistic photorealistic beautiful amazing award winning wallpaper
8k 4k looking view scene shot
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


def token_features(vocab: list[str]) -> np.ndarray:
    """[49408, 16]: shadow (3), highlight (3) in scaled latent YCbCr, weight, then hash features."""
    feats = np.zeros((len(vocab), NF), dtype=np.float64)
    for i, tok in enumerate(vocab):
        if i in (BOS_ID, EOS_ID):
            continue
        word = tok[:-4] if tok.endswith("</w>") else tok
        for k in range(7, NF):  # free dims: hash values, small
            feats[i, k] = (_hash01(i, k) - 0.5) * 0.2
        if not word.isalpha() or len(word) < 2 or not word.isascii():
            continue
        if word in STOP_WORDS:
            continue
        if tok.endswith("</w>") and word in PALETTES:
            sh, hl = PALETTES[word]
            feats[i, 0:3] = _rgb_to_lat(sh)
            feats[i, 3:6] = _rgb_to_lat(hl)
            feats[i, F_W] = STRONG_WEIGHT
            continue
        hue = _hash01(i, 1)
        sat = 0.45 + 0.35 * _hash01(i, 2)
        sh = colorsys.hls_to_rgb(hue, 0.16, sat)
        hl = colorsys.hls_to_rgb((hue + 0.08 * (_hash01(i, 3) - 0.5)) % 1.0, 0.80, sat)
        feats[i, 0:3] = _rgb_to_lat(np.array(sh) * 255)
        feats[i, 3:6] = _rgb_to_lat(np.array(hl) * 255)
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


def _smoothstep(g: Graph, x):
    return g.mul(g.mul(x, x), g.sub(g.const(3.0), g.mul(x, g.const(2.0))))


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
    # Denoise by bands: a wide blur for chroma and the noisy regime, a narrow one for luma detail,
    # the residual only when the noise is low. Weights follow the noise level r.
    lo = _blur(g, y, 4, 1.0, 2)
    wide = _blur(g, y, 4, 2.5, 5)
    r2 = g.mul(r, r)
    w_mid = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(r2, g.const(1 / 0.6 ** 2)))])
    w_hi = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(r2, g.const(1 / 0.25 ** 2)))])
    luma = g.add(wide, g.add(g.mul(w_mid, g.sub(lo, wide)), g.mul(w_hi, g.sub(y, lo))))
    den = g.op("Concat", [_chan(g, luma, 0, 1), _chan(g, wide, 1, 3), _chan(g, luma, 3, 4)], axis=1)
    # Prompt palette: weighted mean of the token features.
    f = g.op("Slice", [ehs, g.i64([0]), g.i64([NF]), g.i64([2])])  # [B,S,16]
    w = g.op("Relu", [g.op("Slice", [f, g.i64([F_W]), g.i64([F_W + 1]), g.i64([2])])])  # [B,S,1]
    sw = g.op("ReduceSum", [w, g.i64([1])], keepdims=1)  # [B,1,1]
    pal = g.div(g.op("ReduceSum", [g.mul(f, w), g.i64([1])], keepdims=1), g.add(sw, g.const(1e-6)))
    presence = g.div(sw, g.add(sw, g.const(0.5)))  # 0 for an empty prompt
    sh = g.op("Reshape", [g.op("Slice", [pal, g.i64([0]), g.i64([3]), g.i64([2])]), g.i64([-1, 3, 1, 1])])
    hl = g.op("Reshape", [g.op("Slice", [pal, g.i64([3]), g.i64([6]), g.i64([2])]), g.i64([-1, 3, 1, 1])])
    presence = g.op("Reshape", [presence, g.i64([-1, 1, 1, 1])])
    # Gradient map of the denoised luma onto the palette.
    den3 = _chan(g, den, 0, 3)
    yn = g.op("Clip", [g.add(g.mul(_chan(g, den, 0, 1), g.const(0.5 / LAT_GAIN)), g.const(0.5)), g.const(0.0),
                       g.const(1.0)])
    mapped = g.add(sh, g.mul(g.sub(hl, sh), _smoothstep(g, yn)))
    tau = g.mul(presence, g.mul(g.const(0.62), g.sub(g.const(1.0), g.op("Exp", [g.mul(r, g.const(-2.0))]))))
    styled = g.add(den3, g.mul(tau, g.sub(mapped, den3)))
    # Far from the data (large noise) the estimate leans on the prompt: the palette over a normalised
    # low-pass of the noisy latent.
    norm = g.op("Reciprocal", [g.add(g.const(1.0), g.mul(r, g.const(0.12)))])
    yg = g.sigmoid(g.mul(g.mul(_chan(g, wide, 0, 1), norm), g.const(2.4 / LAT_GAIN)))
    gen_pal = g.add(sh, g.mul(g.sub(hl, sh), _smoothstep(g, yg)))
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
    # Two bilinear stages (x2 then x4): smoother than one x8 and far cheaper than cubic.
    up = g.op("Resize", [g.op("Concat", [ycc, ink], axis=1), "", g.const([1, 1, 2, 2], np.float32)],
              mode="linear", coordinate_transformation_mode="half_pixel")
    up = g.op("Resize", [up, "", g.const([1, 1, 4, 4], np.float32)], mode="linear",
              coordinate_transformation_mode="half_pixel")
    # Soft posterisation of the luma (5 bands), half blended with the smooth luma.
    yl = g.mul(_chan(g, up, 0, 1), g.const(CONTRAST))
    yn = g.mul(g.add(yl, g.const(1.0)), g.const(0.5 * 5))
    steps = g.op("Sigmoid", [g.mul(g.sub(yn, g.const(np.array([1, 2, 3, 4], np.float32)[None, :, None, None])),
                                   g.const(10.0))])
    q = g.op("ReduceSum", [steps, g.i64([1])], keepdims=1)  # 0..4
    yq = g.sub(g.mul(q, g.const(2.0 / 4.0)), g.const(1.0))
    ymix = g.add(g.mul(yl, g.const(0.45)), g.mul(yq, g.const(0.55)))
    ymix = g.sub(ymix, g.mul(_chan(g, up, 3, 4), g.add(ymix, g.const(1.0))))  # darken towards black on ink
    chroma = g.mul(_chan(g, up, 1, 3), g.const(1.15))
    rgb = g.conv(g.op("Concat", [ymix, chroma], axis=1), YCC2RGB[:, :, None, None], None, pad=0, base="ycc2rgb")
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
