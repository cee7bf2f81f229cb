"""Tiny random-weight models covering every signature variant the engine must accept.

64x64 images (8x8 latents) in the tests; all graphs are fully convolutional, so any multiple of 8
works. Each UNet uses all three inputs: the timestep through a sinusoidal embedding, the text
through one cross-attention layer. Weights are drawn from a fixed seed and scaled so that
activations stay O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .graph import NP_TO_ONNX, Graph

E_TINY = 32
C_UNET = 16
C_VAE = 8


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: type = np.float32
    ids_dtype: type = np.int64
    timestep: str = "int64[B]"  # "int64[B]", "float32[]", "float16[]", "float32[B]"
    vae_out: str = "latent_sample"  # or "latent_parameters"
    vae_kind: str = "kl"  # or "tiny" (TAESD / AutoencoderTiny)
    scaling_factor: float = 0.18215
    unet_out: str = "out_sample"
    tokenizer_files: str = "slow+fast"
    pad: str = "<|endoftext|>"
    scheduler: str = "pndm"
    seed: int = 0
    # Fused UNet + ControlNet graphs: the number of ControlNets and whose input names
    # ("ortdemo": controlnet_images / controlnet_scales, as ONNX Runtime's Stable Diffusion demo;
    # "diffusers": controlnet_conds / conditioning_scales, as diffusers' convert_stable_diffusion_controlnet_to_onnx).
    controlnets: int = 0
    controlnet_layout: str = "ortdemo"


VARIANTS = [
    Variant("tiny-sd15", seed=15),
    Variant("tiny-turbo", timestep="float32[]", vae_out="latent_parameters", tokenizer_files="fast", pad="!",
            scheduler="euler", seed=21),
    Variant("tiny-fp16", dtype=np.float16, timestep="float16[]", vae_kind="tiny", scaling_factor=1.0,
            scheduler="lcm", seed=16),
    Variant("tiny-sdexport", ids_dtype=np.int32, timestep="float32[B]", unet_out="latent", seed=7),
]

# ControlNet layouts (models/tiny-controlnet*): generated beside the others.
CONTROLNET_VARIANTS = [
    Variant("tiny-controlnet", timestep="float32[1]", unet_out="latent", controlnets=1, controlnet_layout="ortdemo",
            seed=31),
    Variant("tiny-controlnet2", timestep="float32[1]", unet_out="noise_pred", controlnets=2,
            controlnet_layout="diffusers", seed=32),
]

CONTROLNET_INPUTS = {
    "ortdemo": ("controlnet_images", "controlnet_scales"),
    "diffusers": ("controlnet_conds", "conditioning_scales"),
}


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, part])


def _he(rng, shape, gain=1.0):
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
    return rng.standard_normal(shape) * (gain * np.sqrt(2.0 / fan_in))


def _layer_norm(g: Graph, x, dim: int):
    return g.op("LayerNormalization", [x, g.init("ln_s", np.ones(dim)), g.init("ln_b", np.zeros(dim))],
                axis=-1, epsilon=1e-5)


def text_encoder(v: Variant) -> Graph:
    """ids [B,77] -> last_hidden_state [B,77,E], pooler_output [B,E] (one causal transformer layer)."""
    g = Graph("text_encoder", v.dtype)
    rng = _rng(v.seed, 1)
    E = E_TINY
    ids = g.input("input_ids", NP_TO_ONNX[np.dtype(v.ids_dtype)], ["batch_size", "sequence_length"])
    ids64 = g.cast(ids, TensorProto.INT64) if v.ids_dtype != np.int64 else ids
    tok = g.op("Gather", [g.init("token_embedding", rng.standard_normal((49408, E)) * 0.5), ids64], axis=0)
    pos = g.init("position_embedding", rng.standard_normal((77, E)) * 0.2)
    # Positions up to the sequence length (77 in practice).
    seq = g.op("Slice", [g.op("Shape", [ids]), g.i64([1]), g.i64([2])])
    pos = g.op("Slice", [pos, g.i64([0]), seq, g.i64([0])])
    h = g.add(tok, pos)
    # Causal self-attention.
    x = _layer_norm(g, h, E)
    q = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="q")
    k = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="k")
    val = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="v")
    s = g.mul(g.matmul(q, g.op("Transpose", [k], perm=[0, 2, 1])), g.const(1.0 / np.sqrt(E)))
    mask = np.triu(np.full((77, 77), -1e4), 1)
    mask_sl = g.op("Slice", [g.init("causal_mask", mask), g.i64([0, 0]), g.op("Concat", [seq, seq], axis=0),
                             g.i64([0, 1])])
    a = g.op("Softmax", [g.add(s, mask_sl)], axis=-1)
    h = g.add(h, g.linear(g.matmul(a, val), rng.standard_normal((E, E)) / np.sqrt(E), base="o"))
    # MLP with quick_gelu.
    x = _layer_norm(g, h, E)
    m = g.linear(x, rng.standard_normal((E, 2 * E)) / np.sqrt(E), np.zeros(2 * E), base="fc1")
    m = g.mul(m, g.sigmoid(g.mul(m, g.const(1.702))))
    h = g.add(h, g.linear(m, rng.standard_normal((2 * E, E)) / np.sqrt(2 * E), np.zeros(E), base="fc2"))
    h = _layer_norm(g, h, E)
    g.output(h, "last_hidden_state", g.ft, ["batch_size", "sequence_length", E])
    # Pooled output: the hidden state at the eos token (the largest id), as CLIP does.
    eos_pos = g.op("ArgMax", [g.cast(ids, TensorProto.FLOAT)], axis=1, keepdims=1)  # [B,1]
    hot = g.op("Equal", [g.op("Range", [g.i64(0), g.op("Squeeze", [seq, g.i64([0])]), g.i64(1)]), eos_pos])
    hot = g.op("Unsqueeze", [g.cast(hot, g.ft), g.i64([2])])
    pooled = g.op("ReduceSum", [g.mul(h, hot), g.i64([1])], keepdims=0)
    g.output(pooled, "pooler_output", g.ft, ["batch_size", E])
    return g


def timestep_input(g: Graph, kind: str):
    """Declare the timestep input; return it as float32 [B] (broadcast over the batch of `sample`)."""
    if kind == "int64[B]":
        t = g.input("timestep", TensorProto.INT64, ["batch_size"])
    elif kind == "float32[B]":
        t = g.input("timestep", TensorProto.FLOAT, ["batch_size"])
    elif kind == "float32[]":
        t = g.input("timestep", TensorProto.FLOAT, [])
    elif kind == "float32[1]":  # one timestep for the whole batch (ORT demo, diffusers' ControlNet export)
        t = g.input("timestep", TensorProto.FLOAT, [1])
    elif kind == "float16[]":
        t = g.input("timestep", TensorProto.FLOAT16, [])
    else:
        raise ValueError(kind)
    tf = g.cast(t, TensorProto.FLOAT) if kind != "float32[B]" else t
    if kind.endswith("[]") or kind.endswith("[1]"):
        batch = g.op("Slice", [g.op("Shape", ["sample"]), g.i64([0]), g.i64([1])])
        tf = g.op("Expand", [g.op("Reshape", [tf, g.i64([1])]), batch])
    return tf


def time_embedding(g: Graph, tf, dim: int):
    """Sinusoidal timestep embedding (flip_sin_to_cos, freq_shift 0), computed in float32: [B, dim]."""
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)
    arg = g.mul(g.op("Unsqueeze", [tf, g.i64([1])]), g.const(freqs[None, :], np.float32))
    emb = g.op("Concat", [g.op("Cos", [arg]), g.op("Sin", [arg])], axis=1)
    return g.cast(emb, g.ft) if g.dtype != np.float32 else emb


def unet(v: Variant) -> Graph:
    g = Graph("unet", v.dtype)
    rng = _rng(v.seed, 2)
    C, E, d = C_UNET, E_TINY, 16
    sample = g.input("sample", g.ft, ["batch_size", 4, "height", "width"])
    tf = timestep_input(g, v.timestep)
    ehs = g.input("encoder_hidden_states", g.ft, ["batch_size", "sequence_length", E])
    temb = time_embedding(g, tf, 32)
    temb = g.silu(g.linear(temb, rng.standard_normal((32, 4 * C)) / np.sqrt(32) * 1.5, np.zeros(4 * C), base="t1"))
    temb = g.linear(temb, rng.standard_normal((4 * C, C)) / np.sqrt(4 * C), np.zeros(C), base="t2")
    temb = g.op("Unsqueeze", [temb, g.i64([2, 3])])
    h = g.conv(sample, _he(rng, (C, 4, 3, 3)), np.zeros(C), base="conv_in")
    h = g.add(h, temb)
    if v.controlnets:
        h = g.add(h, controlnet_residuals(g, v, sample, temb))
    h = g.conv(g.silu(h), _he(rng, (C, C, 3, 3)), np.zeros(C), base="res")
    # Cross-attention of the pixels on the text.
    shape = g.op("Shape", [h])
    seq = g.op("Transpose", [g.op("Reshape", [h, g.i64([0, 0, -1])])], perm=[0, 2, 1])  # [B,hw,C]
    q = g.linear(seq, rng.standard_normal((C, d)) / np.sqrt(C), base="attn_q")
    k = g.linear(ehs, rng.standard_normal((E, d)) * (2.0 / np.sqrt(E)), base="attn_k")
    val = g.linear(ehs, rng.standard_normal((E, d)) / np.sqrt(E), base="attn_v")
    s = g.mul(g.matmul(q, g.op("Transpose", [k], perm=[0, 2, 1])), g.const(1.0 / np.sqrt(d)))
    o = g.matmul(g.op("Softmax", [s], axis=-1), val)
    o = g.linear(o, rng.standard_normal((d, C)) * (2.0 / np.sqrt(d)), base="attn_o")
    o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1]), shape])
    h = g.add(h, o)
    out = g.conv(g.silu(h), _he(rng, (4, C, 3, 3), 0.7), np.zeros(4), base="conv_out")
    g.output(out, v.unet_out, g.ft, ["batch_size", 4, "height", "width"])
    return g


def controlnet_residuals(g: Graph, v, sample, temb):
    """The ControlNets of a fused graph: images [num, B, 3, H, W] in [0, 1], scales [num] (ORT demo) or
    [num, 1] (diffusers); `v` is a tiny or SDXL variant with seed, controlnets and controlnet_layout. Each ControlNet sees its image, the sample and the timestep; its residual
    [B, C, h, w], times its scale, is added to the UNet's features. Sum over the ControlNets."""
    rng = _rng(v.seed, 5)
    C, num = C_UNET, v.controlnets
    img_name, scale_name = CONTROLNET_INPUTS[v.controlnet_layout]
    images = g.input(img_name, g.ft, [num, "2B", 3, "H", "W"])
    scale_shape = [num] if v.controlnet_layout == "ortdemo" else [num, 1]
    scales = g.input(scale_name, g.ft, scale_shape)
    total = None
    for i in range(num):
        img = g.op("Gather", [images, g.i64(i)], axis=0)  # [B, 3, H, W]
        hint = img
        cin = 3
        for _ in range(3):
            hint = g.silu(g.conv(hint, _he(rng, (C, cin, 3, 3)), rng.standard_normal(C) * 0.1, stride=2))
            cin = C
        x = g.add(g.conv(sample, _he(rng, (C, 4, 3, 3)), np.zeros(C)), temb)
        res = g.conv(g.silu(g.add(x, hint)), _he(rng, (C, C, 3, 3), 1.5), np.zeros(C))
        scale = g.op("Gather", [g.op("Reshape", [scales, g.i64([-1])]), g.i64(i)], axis=0)  # scalar
        res = g.mul(res, scale)
        total = res if total is None else g.add(total, res)
    return total


def depth_model(seed: int = 41) -> Graph:
    """An image-to-depth graph in the Hugging Face Depth-Anything export layout: pixel_values [B, 3, H, W]
    (ImageNet-normalised) -> predicted_depth [B, H/4, W/4]."""
    g = Graph("depth", np.float32)
    rng = _rng(seed, 1)
    C = C_VAE
    x = g.input("pixel_values", g.ft, ["batch_size", 3, "height", "width"])
    h = g.silu(g.conv(x, _he(rng, (C, 3, 3, 3)), np.zeros(C), stride=2))
    h = g.silu(g.conv(h, _he(rng, (C, C, 3, 3)), np.zeros(C), stride=2))
    d = g.conv(h, _he(rng, (1, C, 3, 3), 0.7), np.zeros(1))
    d = g.op("Squeeze", [d, g.i64([1])])
    g.output(d, "predicted_depth", g.ft, ["batch_size", "height_out", "width_out"])
    return g


def vae_encoder(v: Variant) -> Graph:
    g = Graph("vae_encoder", v.dtype)
    rng = _rng(v.seed, 3)
    C = C_VAE
    x = g.input("sample", g.ft, ["batch_size", 3, "height", "width"])
    if v.vae_kind == "tiny":
        # AutoencoderTiny: [-1,1] -> [0,1], conv + residual blocks with ReLU, stride-2 convs.
        h = g.mul(g.add(x, g.const(1.0)), g.const(0.5))
        h = g.op("Relu", [g.conv(h, _he(rng, (C, 3, 3, 3)), np.zeros(C))])
        for _ in range(3):
            h = g.conv(h, _he(rng, (C, C, 3, 3), 0.8), None, stride=2)
            r = g.op("Relu", [g.conv(h, _he(rng, (C, C, 3, 3)), np.zeros(C))])
            r = g.conv(r, _he(rng, (C, C, 3, 3), 0.5), np.zeros(C))
            h = g.op("Relu", [g.add(h, r)])
        out = g.conv(h, _he(rng, (4, C, 3, 3), 0.7), np.zeros(4))
        name, ch = "latent_sample", 4
    else:
        h = x
        cin = 3
        for _ in range(3):
            h = g.silu(g.conv(h, _he(rng, (C, cin, 3, 3)), np.zeros(C), stride=2))
            cin = C
        ch = 8 if v.vae_out == "latent_parameters" else 4
        w = _he(rng, (ch, C, 3, 3), 0.7) / v.scaling_factor * 0.5
        out = g.conv(h, w, np.zeros(ch))
        name = v.vae_out
    g.output(out, name, g.ft, ["batch_size", ch, "height_latent", "width_latent"])
    return g


def vae_decoder(v: Variant) -> Graph:
    g = Graph("vae_decoder", v.dtype)
    rng = _rng(v.seed, 4)
    C = C_VAE
    z = g.input("latent_sample", g.ft, ["batch_size", 4, "height_latent", "width_latent"])
    if v.vae_kind == "tiny":
        h = g.mul(g.op("Tanh", [g.mul(z, g.const(1.0 / 3.0))]), g.const(3.0))
        h = g.op("Relu", [g.conv(h, _he(rng, (C, 4, 3, 3)), np.zeros(C))])
        for _ in range(3):
            r = g.op("Relu", [g.conv(h, _he(rng, (C, C, 3, 3)), np.zeros(C))])
            h = g.op("Relu", [g.add(h, g.conv(r, _he(rng, (C, C, 3, 3), 0.5), np.zeros(C)))])
            h = g.op("Resize", [h, "", g.const([1, 1, 2, 2], np.float32)], mode="nearest")
            h = g.conv(h, _he(rng, (C, C, 3, 3), 0.8), None)
        # Bounded around mid-grey so that tests compare unclipped pixels.
        y = g.add(g.mul(g.op("Tanh", [g.conv(h, _he(rng, (3, C, 3, 3), 0.5), np.zeros(3))]), g.const(0.4)),
                  g.const(0.5))
        y = g.sub(g.mul(y, g.const(2.0)), g.const(1.0))  # [0,1] -> [-1,1] as diffusers' DecoderTiny
    else:
        # Latents arrive unscaled (about 1 / scaling_factor in size).
        h = g.silu(g.conv(z, _he(rng, (C, 4, 3, 3)) * v.scaling_factor, np.zeros(C)))
        for _ in range(3):
            h = g.op("Resize", [h, "", g.const([1, 1, 2, 2], np.float32)], mode="nearest")
            h = g.silu(g.conv(h, _he(rng, (C, C, 3, 3)), np.zeros(C)))
        # Bounded so that tests compare unclipped pixels.
        y = g.mul(g.op("Tanh", [g.conv(h, _he(rng, (3, C, 3, 3), 0.5), np.zeros(3))]), g.const(0.8))
    g.output(y, "sample", g.ft, ["batch_size", 3, "height", "width"])
    return g
