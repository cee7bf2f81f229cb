"""A model with sdxl-turbo's architecture sizes and random weights, for GPU benchmarks.

sdxl-turbo is SDXL distilled: CLIP ViT-L text encoder (E1 = 768, 12 layers, 12 heads) and OpenCLIP
ViT-bigG (E2 = 1280, 32 layers, 20 heads, projection 1280); UNet2DConditionModel with block_out_channels
[320, 640, 1280], transformer layers [0, 2, 10] per attention (10 in the mid block), head dim 64,
cross_attention_dim 2048, addition_embed_type "text_time" (1280 + 6 x 256 = 2816 inputs); the SDXL VAE
(AutoencoderKL [128, 256, 512, 512], scaling_factor 0.13025). The graphs follow optimum's SDXL export
(text encoders with every layer's hidden states as outputs, `text_embeds`, `time_ids`, the UNet weights in
model.onnx_data). The UNet is about 2.6 B parameters (10 GB in float32): made on demand only
(`make_models.py --sdxl-turbo-shaped DIR`), never by set-up. The output is meaningless: it is for timing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from onnx import TensorProto

from . import clip_vocab, configs, sdturbo, sdxl
from .sdturbo import Net, gelu, resnet


@dataclass(frozen=True)
class XlDims:
    """Architecture sizes; the defaults are sdxl-turbo's. Smaller ones exercise the same graphs in tests."""

    e1: int = 768
    e1_layers: int = 12
    e1_heads: int = 12
    e2: int = 1280
    e2_layers: int = 32
    e2_heads: int = 20
    pooled: int = 1280
    unet_blocks: tuple = (320, 640, 1280)
    transformer_layers: tuple = (0, 2, 10)
    head_dim: int = 64
    time_dim: int = 1280
    add_time_dim: int = 256
    vae_blocks: tuple = (128, 256, 512, 512)
    groups: int = 32


SDXL_TURBO = XlDims()
SMALL = XlDims(e1=32, e1_layers=2, e1_heads=2, e2=48, e2_layers=2, e2_heads=2, pooled=48,
               unet_blocks=(32, 64, 64), transformer_layers=(0, 1, 2), head_dim=16, time_dim=64,
               add_time_dim=8, vae_blocks=(32, 32, 64, 64), groups=8)


def _sd(d: XlDims, text_dim: int) -> sdturbo.Dims:
    """The sd-turbo builders' view of these sizes (shared group norm, VAE and resnet code)."""
    return sdturbo.Dims(text_dim=text_dim, text_layers=1, text_heads=1, unet_blocks=d.unet_blocks,
                        head_dim=d.head_dim, time_dim=d.time_dim, vae_blocks=d.vae_blocks, groups=d.groups)


def text_encoder(d: XlDims, second: bool) -> Net:
    E, layers, heads = (d.e2, d.e2_layers, d.e2_heads) if second else (d.e1, d.e1_layers, d.e1_heads)
    n = Net("text_encoder_2" if second else "text_encoder", 12 if second else 11, _sd(d, E))
    g = n.g
    ids = g.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    h = g.op("Gather", [g.init("token_embedding", n.w((49408, E), 0.02)), ids], axis=0)
    seq = g.op("Slice", [g.op("Shape", [ids]), g.i64([1]), g.i64([2])])
    pos = g.op("Slice", [g.init("position_embedding", n.w((77, E), 0.01)), g.i64([0]), seq, g.i64([0])])
    h = g.add(h, pos)
    mask = g.op("Slice", [g.init("causal_mask", np.triu(np.full((77, 77), -1e4, np.float32), 1)), g.i64([0, 0]),
                          g.op("Concat", [seq, seq], axis=0), g.i64([0, 1])])
    hidden = [h]
    for _ in range(layers):
        x = n.layer_norm(h, E)
        h = g.add(h, n.attention(x, x, E, E, heads, mask=mask))
        x = n.layer_norm(h, E)
        h = g.add(h, n.linear(gelu(g, n.linear(x, E, 4 * E)), 4 * E, E, gain=0.3))
        hidden.append(h)
    last = n.layer_norm(h, E)
    eos_pos = g.op("ArgMax", [g.cast(ids, TensorProto.FLOAT)], axis=1, keepdims=1)
    hot = g.op("Equal", [g.op("Range", [g.i64(0), g.op("Squeeze", [seq, g.i64([0])]), g.i64(1)]), eos_pos])
    hot = g.op("Unsqueeze", [g.cast(hot, TensorProto.FLOAT), g.i64([2])])
    pooled = g.op("ReduceSum", [g.mul(last, hot), g.i64([1])], keepdims=0)
    seq_shape = ["batch_size", "sequence_length", E]
    if second:
        g.output(n.linear(pooled, E, d.pooled, bias=False), "text_embeds", TensorProto.FLOAT,
                 ["batch_size", d.pooled])
        g.output(last, "last_hidden_state", TensorProto.FLOAT, seq_shape)
    else:
        g.output(last, "last_hidden_state", TensorProto.FLOAT, seq_shape)
        g.output(pooled, "pooler_output", TensorProto.FLOAT, ["batch_size", E])
    for i, hs in enumerate(hidden):
        g.output(hs, f"hidden_states.{i}", TensorProto.FLOAT, seq_shape)
    return n


def transformer(n: Net, x, ehs, c: int, layers: int, ctx_dim: int):
    """Transformer2DModel with `layers` basic blocks (self-attention, cross-attention, GEGLU)."""
    g = n.g
    heads = max(1, c // n.dims.head_dim)
    shape = g.op("Shape", [x])
    h = n.group_norm(x, c, eps=1e-6)
    h = g.op("Transpose", [g.op("Reshape", [h, g.i64([0, c, -1])])], perm=[0, 2, 1])
    h = n.linear(h, c, c)
    for _ in range(layers):
        a = n.layer_norm(h, c)
        h = g.add(h, n.attention(a, a, c, c, heads))
        a = n.layer_norm(h, c)
        h = g.add(h, n.attention(a, ehs, c, ctx_dim, heads))
        a = n.layer_norm(h, c)
        proj = n.linear(a, c, 8 * c)
        val = g.op("Slice", [proj, g.i64([0]), g.i64([4 * c]), g.i64([-1])])
        gate = g.op("Slice", [proj, g.i64([4 * c]), g.i64([8 * c]), g.i64([-1])])
        h = g.add(h, n.linear(g.mul(val, gelu(g, gate)), 4 * c, c, gain=0.3))
    h = n.linear(h, c, c, gain=0.3)
    h = g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 1]), shape])
    return g.add(x, h)


def _sinusoid(g, t, dim: int):
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)
    arg = g.mul(g.op("Unsqueeze", [t, g.i64([1])]), g.const(freqs[None, :]))
    return g.op("Concat", [g.op("Cos", [arg]), g.op("Sin", [arg])], axis=1)


def unet(d: XlDims) -> Net:
    ctx = d.e1 + d.e2
    n = Net("unet", 2, _sd(d, ctx))
    g = n.g
    c0, T = d.unet_blocks[0], d.time_dim
    x = g.input("sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    t = g.input("timestep", TensorProto.FLOAT, [])
    ehs = g.input("encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "sequence_length", ctx])
    te = g.input("text_embeds", TensorProto.FLOAT, ["batch_size", d.pooled])
    tid = g.input("time_ids", TensorProto.FLOAT, ["batch_size", sdxl.TIME_IDS])
    batch = g.op("Slice", [g.op("Shape", [x]), g.i64([0]), g.i64([1])])
    tb = g.op("Expand", [g.op("Reshape", [t, g.i64([1])]), batch])
    temb = n.linear(g.silu(n.linear(_sinusoid(g, tb, c0), c0, T)), T, T)
    tid_emb = g.op("Reshape", [_sinusoid(g, g.op("Reshape", [tid, g.i64([-1])]), d.add_time_dim),
                               g.i64([-1, sdxl.TIME_IDS * d.add_time_dim])])
    add_in = d.pooled + sdxl.TIME_IDS * d.add_time_dim
    add = n.linear(g.silu(n.linear(g.op("Concat", [te, tid_emb], axis=1), add_in, T)), T, T)
    temb = g.add(temb, add)

    blocks, tl = list(d.unet_blocks), list(d.transformer_layers)
    last = len(blocks) - 1
    h = n.conv(x, 4, c0)
    skips = [(h, c0)]
    ch = c0
    for i, cout in enumerate(blocks):
        for _ in range(2):
            h = resnet(n, h, ch, cout, temb)
            ch = cout
            if tl[i]:
                h = transformer(n, h, ehs, ch, tl[i], ctx)
            skips.append((h, ch))
        if i < last:
            h = n.conv(h, ch, ch, stride=2)
            skips.append((h, ch))
    h = resnet(n, h, ch, ch, temb)
    h = transformer(n, h, ehs, ch, tl[-1], ctx)
    h = resnet(n, h, ch, ch, temb)
    for i, cout in enumerate(reversed(blocks)):
        layers = tl[last - i]
        for _ in range(3):
            s, sc = skips.pop()
            h = resnet(n, g.op("Concat", [h, s], axis=1), ch + sc, cout, temb)
            ch = cout
            if layers:
                h = transformer(n, h, ehs, ch, layers, ctx)
        if i < last:
            h = g.op("Resize", [h, "", g.const([1, 1, 2, 2])], mode="nearest")
            h = n.conv(h, ch, ch)
    out = n.conv(g.silu(n.group_norm(h, ch)), ch, 4, gain=0.5)
    g.output(out, "out_sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    return n


def write(dest: Path, log=print, dims: XlDims = SDXL_TURBO) -> None:
    root = Path(__file__).resolve().parents[2]
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab, merges = clip_vocab.vocab_and_merges(clip_vocab.bpe_gz_bytes(root / ".deps", log))
    cache: dict = {}
    clip_vocab.write_tokenizer(tmp / "tokenizer", vocab, merges, pad="<|endoftext|>", files="slow", cache=cache)
    clip_vocab.write_tokenizer(tmp / "tokenizer_2", vocab, merges, pad="!", files="slow", cache=cache)
    v = replace(sdxl.VARIANTS[0], name="sdxl-turbo-shaped")
    (tmp / "model_index.json").write_text(sdxl._model_index(v))
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler/scheduler_config.json").write_text(sdxl.scheduler_config("euler_a"))
    vae_cfg = configs.vae_kl_config(sdxl.SDXL_SCALING_FACTOR, 1024, list(dims.vae_blocks))
    unet_cfg = configs.unet_config(dims.e1 + dims.e2, 128, list(dims.unet_blocks),
                                   [max(1, c // dims.head_dim) for c in dims.unet_blocks], {
                                       "addition_embed_type": "text_time",
                                       "addition_time_embed_dim": dims.add_time_dim,
                                       "projection_class_embeddings_input_dim":
                                           dims.pooled + sdxl.TIME_IDS * dims.add_time_dim,
                                       "transformer_layers_per_block": list(dims.transformer_layers),
                                       "use_linear_projection": True,
                                   })
    cfgs = {
        "text_encoder": configs.text_encoder_config(dims.e1, dims.e1_layers, dims.e1_heads, 4 * dims.e1,
                                                    "float32"),
        "text_encoder_2": configs.text_encoder_config(dims.e2, dims.e2_layers, dims.e2_heads, 4 * dims.e2,
                                                      "float32"),
        "unet": unet_cfg,
        "vae_encoder": vae_cfg,
        "vae_decoder": vae_cfg,
    }
    doc = "sdxl-turbo-shaped {}: sdxl-turbo's architecture sizes with random weights, for benchmarks only"
    sd = _sd(dims, dims.e1)
    for comp, build in (("text_encoder", lambda: text_encoder(dims, False)),
                        ("text_encoder_2", lambda: text_encoder(dims, True)),
                        ("vae_encoder", lambda: sdturbo.vae_encoder(sd)),
                        ("vae_decoder", lambda: sdturbo.vae_decoder(sd)),
                        ("unet", lambda: unet(dims))):
        t0 = time.monotonic()
        net = build()
        sdturbo._save(net, tmp / comp, doc.format(comp))
        for f in (tmp / comp).iterdir():
            f.chmod(0o644)
        (tmp / comp / "config.json").write_text(cfgs[comp])
        log(f"{comp}: {net.params / 1e6:.0f} M parameters ({time.monotonic() - t0:.0f} s)")
        del net
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"wrote {dest}")


def unet_parameters(dims: XlDims = SDXL_TURBO) -> int:
    """Parameter count of the UNet without building it (shapes only)."""
    counter = _Counter(dims)
    return counter.params


class _Counter:
    """Counts parameters by running the builder with weight drawing replaced by shape bookkeeping."""

    def __init__(self, dims: XlDims):
        orig_w, orig_init = Net.w, sdturbo.Graph.init
        self.params = 0

        def w(net, shape, std):
            net.params += int(np.prod(shape))
            return np.zeros((1,) * len(shape), np.float32)

        try:
            Net.w = w
            sdturbo.Graph.init = lambda g, base, array, dtype=None: base
            self.params = unet(dims).params
        finally:
            Net.w, sdturbo.Graph.init = orig_w, orig_init
