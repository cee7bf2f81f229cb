"""A model with sd-turbo's architecture sizes and random weights, for GPU benchmarks.

sd-turbo is SD 2.1 distilled: OpenCLIP ViT-H text tower (E = 1024, 23 layers), UNet2DConditionModel with
block_out_channels [320, 640, 1280, 1280], linear-projection transformers (head dim 64), AutoencoderKL
[128, 256, 512, 512]. The graphs follow what `optimum-cli export onnx` produces for it (group norm as
reshape + InstanceNormalization, attention as MatMul + Softmax, GEGLU feed-forward), with the optimum
1.6-1.23 signature: input_ids int64, timestep int64 [B], latent_sample. The UNet is about 865 M parameters
(3.5 GB in float32), stored as model.onnx + model.onnx_data. The output is meaningless: it is for timing only.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from . import clip_vocab, configs
from .graph import Graph


@dataclass(frozen=True)
class Dims:
    """Architecture sizes; the defaults are sd-turbo's. Smaller ones exercise the same graphs in tests."""

    text_dim: int = 1024
    text_layers: int = 23
    text_heads: int = 16
    unet_blocks: tuple = (320, 640, 1280, 1280)
    head_dim: int = 64
    time_dim: int = 1280
    vae_blocks: tuple = (128, 256, 512, 512)
    groups: int = 32


SD_TURBO = Dims()
SMALL = Dims(text_dim=64, text_layers=2, text_heads=4, unet_blocks=(32, 64, 64, 64), head_dim=16, time_dim=64,
             vae_blocks=(32, 32, 64, 64), groups=8)


class Net:
    """Graph + deterministic random weights with O(1) activations."""

    def __init__(self, name: str, seed: int, dims: Dims):
        self.dims = dims
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.params = 0

    def w(self, shape, std):
        self.params += int(np.prod(shape))
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def zeros(self, n):
        self.params += n
        return np.zeros(n, np.float32)

    def ones(self, n):
        self.params += n
        return np.ones(n, np.float32)

    def conv(self, x, cin, cout, k=3, stride=1, pad=None, gain=1.0, bias=True):
        w = self.w((cout, cin, k, k), gain * np.sqrt(1.0 / (cin * k * k)))
        return self.g.conv(x, w, self.zeros(cout) if bias else None, stride=stride, pad=pad)

    def linear(self, x, cin, cout, gain=1.0, bias=True):
        return self.g.linear(x, self.w((cin, cout), gain / np.sqrt(cin)), self.zeros(cout) if bias else None)

    def group_norm(self, x, c, eps=1e-5):
        g = self.g
        groups = self.dims.groups
        shape = g.op("Shape", [x])
        h = g.op("Reshape", [x, g.i64([0, groups, -1])])
        h = g.op("InstanceNormalization", [h, g.const(np.ones(groups)), g.const(np.zeros(groups))], epsilon=eps)
        h = g.op("Reshape", [h, shape])
        scale = g.init("gn_w", self.ones(c).reshape(c, 1, 1))
        return g.add(g.mul(h, scale), g.init("gn_b", self.zeros(c).reshape(c, 1, 1)))

    def layer_norm(self, x, c):
        g = self.g
        return g.op("LayerNormalization", [x, g.init("ln_w", self.ones(c)), g.init("ln_b", self.zeros(c))], axis=-1,
                    epsilon=1e-5)

    def attention(self, x, ctx, c, ctx_dim, heads, mask=None, out_gain=0.3):
        """Multi-head attention of x [B, N, c] on ctx [B, M, ctx_dim]."""
        g = self.g
        d = c // heads
        q = self.linear(x, c, c, bias=False)
        k = self.linear(ctx, ctx_dim, c, bias=False)
        v = self.linear(ctx, ctx_dim, c, bias=False)

        def split(t):
            return g.op("Transpose", [g.op("Reshape", [t, g.i64([0, -1, heads, d])])], perm=[0, 2, 1, 3])

        s = g.mul(g.matmul(split(q), g.op("Transpose", [split(k)], perm=[0, 1, 3, 2])), g.const(1.0 / np.sqrt(d)))
        if mask is not None:
            s = g.add(s, mask)
        o = g.matmul(g.op("Softmax", [s], axis=-1), split(v))
        o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.i64([0, -1, c])])
        return self.linear(o, c, c, gain=out_gain)


def gelu(g: Graph, x):
    return g.mul(g.mul(x, g.const(0.5)), g.add(g.const(1.0), g.op("Erf", [g.mul(x, g.const(1 / np.sqrt(2)))])))


# ---------------------------------------------------------------- text encoder

def text_encoder(dims: Dims) -> Net:
    n = Net("text_encoder", 1, dims)
    g = n.g
    E = dims.text_dim
    ids = g.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    h = g.op("Gather", [g.init("token_embedding", n.w((49408, E), 0.02)), ids], axis=0)
    seq = g.op("Slice", [g.op("Shape", [ids]), g.i64([1]), g.i64([2])])
    pos = g.op("Slice", [g.init("position_embedding", n.w((77, E), 0.01)), g.i64([0]), seq, g.i64([0])])
    h = g.add(h, pos)
    mask = g.op("Slice", [g.init("causal_mask", np.triu(np.full((77, 77), -1e4, np.float32), 1)), g.i64([0, 0]),
                          g.op("Concat", [seq, seq], axis=0), g.i64([0, 1])])
    for _ in range(dims.text_layers):
        x = n.layer_norm(h, E)
        h = g.add(h, n.attention(x, x, E, E, dims.text_heads, mask=mask))
        x = n.layer_norm(h, E)
        h = g.add(h, n.linear(gelu(g, n.linear(x, E, 4 * E)), 4 * E, E, gain=0.3))
    h = n.layer_norm(h, E)
    g.output(h, "last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", E])
    eos_pos = g.op("ArgMax", [g.cast(ids, TensorProto.FLOAT)], axis=1, keepdims=1)
    hot = g.op("Equal", [g.op("Range", [g.i64(0), g.op("Squeeze", [seq, g.i64([0])]), g.i64(1)]), eos_pos])
    hot = g.op("Unsqueeze", [g.cast(hot, TensorProto.FLOAT), g.i64([2])])
    g.output(g.op("ReduceSum", [g.mul(h, hot), g.i64([1])], keepdims=0), "pooler_output", TensorProto.FLOAT,
             ["batch_size", E])
    return n


# ---------------------------------------------------------------- UNet

def resnet(n: Net, x, cin, cout, temb=None):
    g = n.g
    temb_dim = n.dims.time_dim
    h = n.conv(g.silu(n.group_norm(x, cin)), cin, cout)
    if temb is not None:
        t = n.linear(g.silu(temb), temb_dim, cout)
        h = g.add(h, g.op("Unsqueeze", [t, g.i64([2, 3])]))
    h = n.conv(g.silu(n.group_norm(h, cout)), cout, cout, gain=0.3)
    skip = x if cin == cout else n.conv(x, cin, cout, k=1, pad=0)
    return g.add(skip, h)


def transformer(n: Net, x, ehs, c):
    g = n.g
    heads = max(1, c // n.dims.head_dim)
    E = n.dims.text_dim
    shape = g.op("Shape", [x])
    h = n.group_norm(x, c, eps=1e-6)
    h = g.op("Transpose", [g.op("Reshape", [h, g.i64([0, c, -1])])], perm=[0, 2, 1])  # [B, HW, C]
    h = n.linear(h, c, c)
    a = n.layer_norm(h, c)
    h = g.add(h, n.attention(a, a, c, c, heads))
    a = n.layer_norm(h, c)
    h = g.add(h, n.attention(a, ehs, c, E, heads))
    a = n.layer_norm(h, c)
    proj = n.linear(a, c, 8 * c)  # GEGLU
    val = g.op("Slice", [proj, g.i64([0]), g.i64([4 * c]), g.i64([-1])])
    gate = g.op("Slice", [proj, g.i64([4 * c]), g.i64([8 * c]), g.i64([-1])])
    h = g.add(h, n.linear(g.mul(val, gelu(g, gate)), 4 * c, c, gain=0.3))
    h = n.linear(h, c, c, gain=0.3)
    h = g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 1]), shape])
    return g.add(x, h)


def unet(dims: Dims) -> Net:
    n = Net("unet", 2, dims)
    g = n.g
    E = dims.text_dim
    c0, T = dims.unet_blocks[0], dims.time_dim
    x = g.input("sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    t = g.input("timestep", TensorProto.INT64, ["batch_size"])
    ehs = g.input("encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "sequence_length", E])
    half = c0 // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)
    arg = g.mul(g.op("Unsqueeze", [g.cast(t, TensorProto.FLOAT), g.i64([1])]), g.const(freqs[None, :]))
    temb = g.op("Concat", [g.op("Cos", [arg]), g.op("Sin", [arg])], axis=1)
    temb = n.linear(g.silu(n.linear(temb, c0, T)), T, T)

    blocks = list(dims.unet_blocks)
    h = n.conv(x, 4, c0)
    skips = [(h, c0)]
    ch = c0
    for i, cout in enumerate(blocks):
        for _ in range(2):
            h = resnet(n, h, ch, cout, temb)
            ch = cout
            if i < 3:
                h = transformer(n, h, ehs, ch)
            skips.append((h, ch))
        if i < 3:
            h = n.conv(h, ch, ch, stride=2)
            skips.append((h, ch))
    h = resnet(n, h, ch, ch, temb)
    h = transformer(n, h, ehs, ch)
    h = resnet(n, h, ch, ch, temb)
    for i, cout in enumerate(reversed(blocks)):
        for _ in range(3):
            s, sc = skips.pop()
            h = resnet(n, g.op("Concat", [h, s], axis=1), ch + sc, cout, temb)
            ch = cout
            if i > 0:
                h = transformer(n, h, ehs, ch)
        if i < 3:
            h = g.op("Resize", [h, "", g.const([1, 1, 2, 2])], mode="nearest")
            h = n.conv(h, ch, ch)
    out = n.conv(g.silu(n.group_norm(h, ch)), ch, 4, gain=0.5)
    g.output(out, "out_sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"])
    return n


# ---------------------------------------------------------------- VAE

def vae_attention(n: Net, x, c):
    g = n.g
    shape = g.op("Shape", [x])
    h = g.op("Transpose", [g.op("Reshape", [n.group_norm(x, c, eps=1e-6), g.i64([0, c, -1])])], perm=[0, 2, 1])
    h = n.attention(h, h, c, c, 1)
    return g.add(x, g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 1]), shape]))


def vae_encoder(dims: Dims) -> Net:
    n = Net("vae_encoder", 3, dims)
    g = n.g
    x = g.input("sample", TensorProto.FLOAT, ["batch_size", 3, "height", "width"])
    blocks = list(dims.vae_blocks)
    h = n.conv(x, 3, blocks[0])
    ch = blocks[0]
    for i, cout in enumerate(blocks):
        for _ in range(2):
            h = resnet(n, h, ch, cout)
            ch = cout
        if i < 3:
            h = g.op("Pad", [h, g.i64([0, 0, 0, 0, 0, 0, 1, 1])])
            h = n.conv(h, ch, ch, stride=2, pad=0)
    h = resnet(n, h, ch, ch)
    h = vae_attention(n, h, ch)
    h = resnet(n, h, ch, ch)
    h = n.conv(g.silu(n.group_norm(h, ch, eps=1e-6)), ch, 8, gain=0.5)
    h = n.conv(h, 8, 8, k=1, pad=0)  # quant_conv
    mean = g.op("Slice", [h, g.i64([0]), g.i64([4]), g.i64([1])])
    g.output(mean, "latent_sample", TensorProto.FLOAT, ["batch_size", 4, "height_latent", "width_latent"])
    return n


def vae_decoder(dims: Dims) -> Net:
    n = Net("vae_decoder", 4, dims)
    g = n.g
    z = g.input("latent_sample", TensorProto.FLOAT, ["batch_size", 4, "height_latent", "width_latent"])
    h = n.conv(z, 4, 4, k=1, pad=0)  # post_quant_conv
    ch = dims.vae_blocks[-1]
    h = n.conv(h, 4, ch)
    h = resnet(n, h, ch, ch)
    h = vae_attention(n, h, ch)
    h = resnet(n, h, ch, ch)
    for i, cout in enumerate(reversed(dims.vae_blocks)):
        for _ in range(3):
            h = resnet(n, h, ch, cout)
            ch = cout
        if i < 3:
            h = g.op("Resize", [h, "", g.const([1, 1, 2, 2])], mode="nearest")
            h = n.conv(h, ch, ch)
    y = n.conv(g.silu(n.group_norm(h, ch, eps=1e-6)), ch, 3, gain=0.3)
    g.output(y, "sample", TensorProto.FLOAT, ["batch_size", 3, "height", "width"])
    return n


def _save(net: Net, dest: Path, doc: str) -> None:
    model = net.g.model(doc) if net.params < 400_000_000 else _model_unchecked(net.g, doc)
    dest.mkdir(parents=True, exist_ok=True)
    if net.params * 4 > 1_800_000_000:
        onnx.save_model(model, str(dest / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx_data", size_threshold=1024)
        onnx.checker.check_model(str(dest / "model.onnx"))
    else:
        onnx.save_model(model, str(dest / "model.onnx"))


def _model_unchecked(g: Graph, doc: str) -> onnx.ModelProto:
    """Graph.model() without the in-memory checker, which refuses protos over 2 GB (checked on disk)."""
    from onnx import helper

    from .graph import OPSET

    graph = helper.make_graph(g.nodes, g.name, g.inputs, g.outputs, g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="i2i make_models.py", producer_version="1")
    m.ir_version = 8
    m.doc_string = doc
    return m


def write(dest: Path, log=print, dims: Dims = SD_TURBO) -> None:
    root = Path(__file__).resolve().parents[2]
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab, merges = clip_vocab.vocab_and_merges(clip_vocab.bpe_gz_bytes(root / ".deps", log))
    clip_vocab.write_tokenizer(tmp / "tokenizer", vocab, merges, pad="!", files="slow", cache={})
    (tmp / "model_index.json").write_text(configs.model_index("EulerDiscreteScheduler", "AutoencoderKL"))
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler/scheduler_config.json").write_text(configs.scheduler_config("euler"))
    E = dims.text_dim
    vae_cfg = configs.vae_kl_config(0.18215, 768, list(dims.vae_blocks))
    cfgs = {
        "text_encoder": configs.text_encoder_config(E, dims.text_layers, dims.text_heads, 4 * E, "float32"),
        "unet": configs.unet_config(E, 64, list(dims.unet_blocks),
                                    [max(1, c // dims.head_dim) for c in dims.unet_blocks],
                                    {"use_linear_projection": True}),
        "vae_encoder": vae_cfg,
        "vae_decoder": vae_cfg,
    }
    doc = "sd-turbo-shaped {}: sd-turbo's architecture sizes with random weights, for benchmarks only"
    for comp, build in (("text_encoder", text_encoder), ("vae_encoder", vae_encoder),
                        ("vae_decoder", vae_decoder), ("unet", unet)):
        t0 = time.monotonic()
        net = build(dims)
        _save(net, tmp / comp, doc.format(comp))
        for f in (tmp / comp).iterdir():
            f.chmod(0o644)
        (tmp / comp / "config.json").write_text(cfgs[comp])
        log(f"{comp}: {net.params / 1e6:.0f} M parameters ({time.monotonic() - t0:.0f} s)")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"wrote {dest}")
