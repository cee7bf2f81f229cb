"""Tiny image-side graphs of an IP-Adapter model folder, with the math of the real ones.

- `image_encoder/`: transformers' CLIPVisionModelWithProjection. `pixel_values` [B, 3, S, S] (CLIP-normalised)
  -> `image_embeds` [B, P] (the projected pooled class token: what IP-Adapter reads) and `hidden_states`
  [B, T, H] (the penultimate layer's output, hidden_states[-2]: what IP-Adapter Plus reads). T = 1 + (S/p)^2.
- `image_proj/`: diffusers' ImageProjection (IP-Adapter: Linear P -> N * D, reshape, LayerNorm) with input
  `image_embeds`, or IPAdapterPlusImageProjection (Plus: the perceiver resampler, N learned queries) with input
  `hidden_states`; output `image_prompt_embeds` [B, N, D]. The input's name is the encoder output it takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import configs
from .graph import Graph

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Vision:
    seed: int
    image_size: int = 32  # S (224 in the real encoders)
    patch: int = 8  # p (14 in ViT-H and ViT-bigG)
    hidden: int = 16  # H (1280 ViT-H, 1664 ViT-bigG)
    heads: int = 2
    layers: int = 2  # (32 ViT-H, 48 ViT-bigG)
    projection: int = 12  # P (1024 ViT-H, 1280 ViT-bigG)

    @property
    def tokens(self) -> int:
        return 1 + (self.image_size // self.patch) ** 2


def _ln(g: Graph, x, dim: int, rng=None):
    scale = np.ones(dim) if rng is None else 1.0 + 0.1 * rng.standard_normal(dim)
    bias = np.zeros(dim) if rng is None else 0.1 * rng.standard_normal(dim)
    return g.op("LayerNormalization", [x, g.init("ln_s", scale), g.init("ln_b", bias)], axis=-1, epsilon=1e-5)


def _heads(g: Graph, x, heads: int, dh: int):
    """[B, T, heads * dh] -> [B, heads, T, dh]."""
    return g.op("Transpose", [g.op("Reshape", [x, g.i64([0, 0, heads, dh])])], perm=[0, 2, 1, 3])


def _mha(g: Graph, q, k, v, heads: int, dh: int):
    """Multi-head scaled dot-product attention; q, k, v [B, T, heads * dh] -> [B, Tq, heads * dh]."""
    qh, kh, vh = (_heads(g, t, heads, dh) for t in (q, k, v))
    s = g.mul(g.matmul(qh, g.op("Transpose", [kh], perm=[0, 1, 3, 2])), g.const(1.0 / np.sqrt(dh)))
    o = g.matmul(g.op("Softmax", [s], axis=-1), vh)
    return g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.i64([0, 0, heads * dh])])


def _gelu(g: Graph, x):
    """GELU, exact (erf), as torch.nn.GELU()."""
    return g.mul(g.mul(x, g.const(0.5)), g.add(g.op("Erf", [g.mul(x, g.const(1.0 / np.sqrt(2.0)))]), g.const(1.0)))


def image_encoder(v: Vision) -> Graph:
    g = Graph("image_encoder", np.float32)
    rng = np.random.default_rng([v.seed, 21])
    H, S, p = v.hidden, v.image_size, v.patch
    dh = H // v.heads
    x = g.input("pixel_values", g.ft, ["batch_size", 3, S, S])
    patches = g.conv(x, rng.standard_normal((H, 3, p, p)) / np.sqrt(3 * p * p), None, stride=p, pad=0, base="patch")
    patches = g.op("Transpose", [g.op("Reshape", [patches, g.i64([0, H, -1])])], perm=[0, 2, 1])  # [B, n, H]
    batch = g.op("Slice", [g.op("Shape", [x]), g.i64([0]), g.i64([1])])
    cls = g.op("Expand", [g.init("class_embedding", rng.standard_normal((1, 1, H))),
                          g.op("Concat", [batch, g.i64([1, H])], axis=0)])
    h = g.op("Concat", [cls, patches], axis=1)
    h = g.add(h, g.init("position_embedding", rng.standard_normal((v.tokens, H)) * 0.5))
    h = _ln(g, h, H, rng)  # pre_layrnorm
    hidden = [h]
    for _ in range(v.layers):
        n = _ln(g, h, H, rng)
        q = g.linear(n, rng.standard_normal((H, H)) / np.sqrt(H), rng.standard_normal(H) * 0.1, base="q")
        k = g.linear(n, rng.standard_normal((H, H)) / np.sqrt(H), rng.standard_normal(H) * 0.1, base="k")
        val = g.linear(n, rng.standard_normal((H, H)) / np.sqrt(H), rng.standard_normal(H) * 0.1, base="v")
        a = _mha(g, q, k, val, v.heads, dh)
        h = g.add(h, g.linear(a, rng.standard_normal((H, H)) / np.sqrt(H), np.zeros(H), base="o"))
        n = _ln(g, h, H, rng)
        m = g.linear(n, rng.standard_normal((H, 4 * H)) / np.sqrt(H), np.zeros(4 * H), base="fc1")
        m = g.mul(m, g.sigmoid(g.mul(m, g.const(1.702))))  # quick_gelu
        h = g.add(h, g.linear(m, rng.standard_normal((4 * H, H)) / np.sqrt(4 * H), np.zeros(H), base="fc2"))
        hidden.append(h)
    pooled = _ln(g, g.op("Gather", [h, g.i64(0)], axis=1), H, rng)  # post_layernorm of the class token
    embeds = g.linear(pooled, rng.standard_normal((H, v.projection)) / np.sqrt(H), base="visual_projection")
    g.output(embeds, "image_embeds", g.ft, ["batch_size", v.projection])
    g.output(hidden[-2], "hidden_states", g.ft, ["batch_size", v.tokens, H])
    return g


@dataclass(frozen=True)
class Projection:
    seed: int
    tokens: int  # N: 4 (IP-Adapter) or 16 (Plus)
    cross_dim: int  # D
    plus: bool = False
    # Plus (the resampler): width, blocks, heads of width dim_head (1280, 4, 20 x 64 in SD 1.5 Plus).
    width: int = 24
    depth: int = 2
    heads: int = 2
    dim_head: int = 8


def image_proj(p: Projection, v: Vision) -> Graph:
    g = Graph("image_proj", np.float32)
    rng = np.random.default_rng([p.seed, 22])
    D, N = p.cross_dim, p.tokens
    if not p.plus:
        x = g.input("image_embeds", g.ft, ["batch_size", v.projection])
        t = g.linear(x, rng.standard_normal((v.projection, N * D)) / np.sqrt(v.projection),
                     rng.standard_normal(N * D) * 0.1, base="image_embeds")
        t = _ln(g, g.op("Reshape", [t, g.i64([0, N, D])]), D, rng)
        g.output(t, "image_prompt_embeds", g.ft, ["batch_size", N, D])
        return g
    W, inner = p.width, p.heads * p.dim_head
    x = g.input("hidden_states", g.ft, ["batch_size", v.tokens, v.hidden])
    x = g.linear(x, rng.standard_normal((v.hidden, W)) / np.sqrt(v.hidden), rng.standard_normal(W) * 0.1,
                 base="proj_in")
    batch = g.op("Slice", [g.op("Shape", [x]), g.i64([0]), g.i64([1])])
    lat = g.op("Expand", [g.init("latents", rng.standard_normal((1, N, W)) / np.sqrt(W)),
                          g.op("Concat", [batch, g.i64([N, W])], axis=0)])
    for _ in range(p.depth):
        # IPAdapterPlusImageProjectionBlock: attention of the queries on [ln0(x), ln1(latents)], then a GELU FFN.
        residual = lat
        enc = _ln(g, x, W, rng)
        ql = _ln(g, lat, W, rng)
        kv = g.op("Concat", [enc, ql], axis=1)
        q = g.linear(ql, rng.standard_normal((W, inner)) / np.sqrt(W), base="to_q")
        k = g.linear(kv, rng.standard_normal((W, inner)) / np.sqrt(W), base="to_k")
        val = g.linear(kv, rng.standard_normal((W, inner)) / np.sqrt(W), base="to_v")
        a = g.linear(_mha(g, q, k, val, p.heads, p.dim_head), rng.standard_normal((inner, W)) / np.sqrt(inner),
                     base="to_out")
        lat = g.add(a, residual)
        f = _gelu(g, g.linear(_ln(g, lat, W, rng), rng.standard_normal((W, 4 * W)) / np.sqrt(W), base="ff1"))
        lat = g.add(g.linear(f, rng.standard_normal((4 * W, W)) / np.sqrt(4 * W), base="ff2"), lat)
    out = g.linear(lat, rng.standard_normal((W, D)) / np.sqrt(W), rng.standard_normal(D) * 0.1, base="proj_out")
    g.output(_ln(g, out, D, rng), "image_prompt_embeds", g.ft, ["batch_size", N, D])
    return g


# ---------------------------------------------------------------- configs

def encoder_config(v: Vision) -> str:
    return configs.dump({
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": v.hidden,
        "image_size": v.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * v.hidden,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": v.heads,
        "num_channels": 3,
        "num_hidden_layers": v.layers,
        "patch_size": v.patch,
        "projection_dim": v.projection,
        "torch_dtype": "float32",
        "transformers_version": "4.40.0",
    })


def preprocessor_config(v: Vision) -> str:
    """feature_extractor/preprocessor_config.json: transformers' CLIPImageProcessor at the encoder's size."""
    return configs.dump({
        "crop_size": {"height": v.image_size, "width": v.image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": v.image_size},
    })


def proj_config(p: Projection, v: Vision, layers: int) -> str:
    """image_proj/config.json: the projection's class and sizes (diffusers' names) and the UNet's IP layers."""
    cfg = {"num_image_text_embeds": p.tokens, "cross_attention_dim": p.cross_dim, "num_ip_layers": layers}
    if p.plus:
        cfg.update({"_class_name": "IPAdapterPlusImageProjection", "embed_dims": v.hidden, "hidden_dims": p.width,
                    "output_dims": p.cross_dim, "depth": p.depth, "dim_head": p.dim_head, "heads": p.heads,
                    "num_queries": p.tokens, "ffn_ratio": 4})
    else:
        cfg.update({"_class_name": "ImageProjection", "image_embed_dim": v.projection})
    return configs.dump(cfg)
