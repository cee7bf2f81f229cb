"""A tiny UNet with diffusers-style transformer blocks, for the IP-Adapter and LoRA test models.

Each transformer block (named as diffusers names them, `mid_block.attentions.0.transformer_blocks.{i}`) runs
self-attention `attn1` on the pixels and cross-attention `attn2` on the text, each with the four projections
`to_q`, `to_k`, `to_v`, `to_out.0` (the only one with a bias), followed by a small feed-forward.

IP-Adapter (the layout of the livepeer StreamDiffusion TensorRT export, its TRTIPAttnProcessor2_0):
`encoder_hidden_states` [B, 77 + N, D] holds the text tokens followed by N image tokens; every `attn2` splits off
the last N, attends to them with its own `to_k_ip` / `to_v_ip` (no bias) and adds the result times
`ipadapter_scale[l]` (l = the attn2's index) to the text attention's output before `to_out.0`. Zero image tokens
contribute exactly nothing (keys and values are zero, so the attention averages zeros).

LoRA (the layout Olive's ExtractAdapters writes): every projection P gets two inputs `P.lora_A.weight`
[in, lora_r] and `P.lora_B.weight` [lora_r, out] and computes x W + b + (x A) B; zeros (any rank) mean no LoRA.
`deltas` fuses weight changes (matmul layout [in, out]) into W instead, for checks of W + scale * A B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from . import tiny
from .graph import Graph

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TOKENS = 77


@dataclass(frozen=True)
class Spec:
    seed: int
    cross_dim: int  # D: the width of encoder_hidden_states
    blocks: int = 2  # transformer blocks = IP layers L
    ip_tokens: int = 0  # N image tokens at the end of encoder_hidden_states (0: no IP-Adapter inputs)
    lora: bool = False  # LoRA A/B inputs on every attention projection
    timestep: str = "float32[B]"
    out_name: str = "latent"
    xl_pooled: int = 0  # SDXL: text_embeds width (0: SD 1.x / 2.x, no text_embeds / time_ids)
    deltas: dict = field(default_factory=dict, compare=False, hash=False)


C = tiny.C_UNET  # channels of the pixel tokens
HEAD = 16  # attention width
FF = 32  # feed-forward width
TIME_IDS = 6
ADD_TIME_DIM = 8


def module_name(block: int, attn: int, proj: str) -> str:
    return f"mid_block.attentions.0.transformer_blocks.{block}.attn{attn}.{proj}"


def lora_modules(spec: Spec) -> dict[str, tuple[int, int]]:
    """Every projection with LoRA inputs: name -> (in, out) of its matmul weight, in graph order."""
    out = {}
    for b in range(spec.blocks):
        for attn, ctx in ((1, C), (2, spec.cross_dim)):
            out[module_name(b, attn, "to_q")] = (C, HEAD)
            out[module_name(b, attn, "to_k")] = (ctx, HEAD)
            out[module_name(b, attn, "to_v")] = (ctx, HEAD)
            out[module_name(b, attn, "to_out.0")] = (HEAD, C)
    return out


def _ln(g: Graph, x, dim: int):
    return g.op("LayerNormalization", [x, g.init("ln_s", np.ones(dim)), g.init("ln_b", np.zeros(dim))],
                axis=-1, epsilon=1e-5)


def _proj(g: Graph, spec: Spec, x, w: np.ndarray, b: np.ndarray | None, name: str):
    """x W (+ b), with the LoRA branch or a fused delta when the spec asks for one."""
    if name in spec.deltas:
        w = w + np.asarray(spec.deltas[name], dtype=np.float64)
    y = g.linear(x, w, b, base=name.replace(".", "_"))
    if spec.lora:
        a = g.input(f"{name}.lora_A.weight", g.ft, [w.shape[0], "lora_r"])
        bb = g.input(f"{name}.lora_B.weight", g.ft, ["lora_r", w.shape[1]])
        y = g.add(y, g.matmul(g.matmul(x, a), bb))
    return y


def _attend(g: Graph, q, k, v):
    s = g.mul(g.matmul(q, g.op("Transpose", [k], perm=[0, 2, 1])), g.const(1.0 / np.sqrt(HEAD)))
    return g.matmul(g.op("Softmax", [s], axis=-1), v)


def _attention(g: Graph, spec: Spec, rng, x, ctx, ctx_dim: int, name: str, ip=None, ip_scale=None):
    """diffusers' Attention: to_q on x, to_k / to_v on ctx, then to_out.0; with `ip` the IP-Adapter branch."""
    q = _proj(g, spec, x, rng.standard_normal((C, HEAD)) / np.sqrt(C), None, f"{name}.to_q")
    k = _proj(g, spec, ctx, rng.standard_normal((ctx_dim, HEAD)) * (2.0 / np.sqrt(ctx_dim)), None, f"{name}.to_k")
    v = _proj(g, spec, ctx, rng.standard_normal((ctx_dim, HEAD)) / np.sqrt(ctx_dim), None, f"{name}.to_v")
    o = _attend(g, q, k, v)
    if ip is not None:
        k_ip = g.linear(ip, rng.standard_normal((ctx_dim, HEAD)) * (2.0 / np.sqrt(ctx_dim)), base="to_k_ip")
        v_ip = g.linear(ip, rng.standard_normal((ctx_dim, HEAD)) * (1.5 / np.sqrt(ctx_dim)), base="to_v_ip")
        o = g.add(o, g.mul(ip_scale, _attend(g, q, k_ip, v_ip)))
    return _proj(g, spec, o, rng.standard_normal((HEAD, C)) * (1.5 / np.sqrt(HEAD)),
                 rng.standard_normal(C) * 0.05, f"{name}.to_out.0")


def _add_time_embedding(g: Graph, spec: Spec, rng, text_embeds, time_ids):
    """SDXL's "text_time" added embedding: text_embeds and the sinusoidal embedding of each time id."""
    tid = tiny.time_embedding(g, g.op("Reshape", [time_ids, g.i64([-1])]), ADD_TIME_DIM)
    tid = g.op("Reshape", [tid, g.i64([-1, TIME_IDS * ADD_TIME_DIM])])
    add = g.op("Concat", [text_embeds, tid], axis=1)
    n = spec.xl_pooled + TIME_IDS * ADD_TIME_DIM
    add = g.silu(g.linear(add, rng.standard_normal((n, 4 * C)) / np.sqrt(n) * 1.5, np.zeros(4 * C), base="add1"))
    return g.linear(add, rng.standard_normal((4 * C, C)) / np.sqrt(4 * C), np.zeros(C), base="add2")


def unet(spec: Spec) -> Graph:
    g = Graph("unet", np.float32)
    rng = np.random.default_rng([spec.seed, 2])
    D, N = spec.cross_dim, spec.ip_tokens
    sample = g.input("sample", g.ft, ["batch_size", 4, "height", "width"])
    tf = tiny.timestep_input(g, spec.timestep)
    seq_len = TEXT_TOKENS + N if N else "sequence_length"
    ehs = g.input("encoder_hidden_states", g.ft, ["batch_size", seq_len, D])
    scales = g.input("ipadapter_scale", g.ft, [spec.blocks]) if N else None
    temb = tiny.time_embedding(g, tf, 32)
    temb = g.silu(g.linear(temb, rng.standard_normal((32, 4 * C)) / np.sqrt(32) * 1.5, np.zeros(4 * C), base="t1"))
    temb = g.linear(temb, rng.standard_normal((4 * C, C)) / np.sqrt(4 * C), np.zeros(C), base="t2")
    if spec.xl_pooled:
        text_embeds = g.input("text_embeds", g.ft, ["batch_size", spec.xl_pooled])
        time_ids = g.input("time_ids", g.ft, ["batch_size", TIME_IDS])
        temb = g.add(temb, _add_time_embedding(g, spec, rng, text_embeds, time_ids))
    h = g.add(g.conv(sample, tiny._he(rng, (C, 4, 3, 3)), np.zeros(C), base="conv_in"),
              g.op("Unsqueeze", [temb, g.i64([2, 3])]))
    h = g.conv(g.silu(h), tiny._he(rng, (C, C, 3, 3)), np.zeros(C), base="res")
    # The last N tokens are the image's (StreamDiffusion's split: end_pos = sequence length - N).
    if N:
        text = g.op("Slice", [ehs, g.i64([0]), g.i64([-N]), g.i64([1])])
        ip = g.op("Slice", [ehs, g.i64([-N]), g.i64([TEXT_TOKENS + N]), g.i64([1])])
    else:
        text, ip = ehs, None
    shape = g.op("Shape", [h])
    x = g.op("Transpose", [g.op("Reshape", [h, g.i64([0, 0, -1])])], perm=[0, 2, 1])  # [B, hw, C]
    for b in range(spec.blocks):
        n1 = _ln(g, x, C)
        x = g.add(x, _attention(g, spec, rng, n1, n1, C, f"mid_block.attentions.0.transformer_blocks.{b}.attn1"))
        scale = g.op("Gather", [scales, g.i64(b)], axis=0) if N else None
        x = g.add(x, _attention(g, spec, rng, _ln(g, x, C), text, D,
                                f"mid_block.attentions.0.transformer_blocks.{b}.attn2", ip, scale))
        f = g.silu(g.linear(_ln(g, x, C), rng.standard_normal((C, FF)) / np.sqrt(C), np.zeros(FF), base="ff1"))
        x = g.add(x, g.linear(f, rng.standard_normal((FF, C)) / np.sqrt(FF), np.zeros(C), base="ff2"))
    h = g.add(h, g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 1]), shape]))
    out = g.conv(g.silu(h), tiny._he(rng, (4, C, 3, 3), 0.3), np.zeros(4), base="conv_out")
    g.output(out, spec.out_name, g.ft, ["batch_size", 4, "height", "width"])
    return g


def timestep_feed(kind: str, t: float, batch: int) -> np.ndarray:
    """A timestep value in the form `kind` declares (for tests)."""
    dtype = np.int64 if kind.startswith("int64") else np.float32
    if kind.endswith("[]"):
        return np.asarray(t, dtype=dtype)
    if kind.endswith("[1]"):
        return np.full((1,), t, dtype=dtype)
    return np.full((batch,), t, dtype=dtype)

