"""Tiny random-weight SDXL-family models (sdxl-turbo, SDXL + LCM-LoRA, TAESDXL) in both export layouts.

SDXL conditions its UNet on two text encoders: the penultimate hidden states of CLIP ViT-L (768) and of
OpenCLIP ViT-bigG (1280) concatenated into `encoder_hidden_states` [B, 77, 2048], the projected pooled output
of the second (`text_embeds` [B, 1280]) and six size numbers (`time_ids` [B, 6]). The tiny models keep that
structure with small sizes (E1 = 24, E2 = 32, pooled 40, two transformer layers per encoder, so the
penultimate hidden state differs from the last one) and a UNet that uses every input, so that a wrong layer,
a wrong pooled vector or wrong time_ids all change the output.

Layouts:
- "optimum": `optimum-cli export onnx` of StableDiffusionXLPipeline. text_encoder -> last_hidden_state,
  pooler_output, hidden_states.0..L; text_encoder_2 -> text_embeds, last_hidden_state, hidden_states.0..L;
  unet (sample, timestep, encoder_hidden_states, text_embeds, time_ids) -> out_sample; VAE as SD 1.5.
- "ortdemo": ONNX Runtime's Stable Diffusion demo (onnxruntime/transformers/models/stable_diffusion,
  diffusion_models.py): CLIP -> text_embeddings (text_encoder: last hidden state; text_encoder_2: the projected
  pooled vector) and hidden_states (the penultimate layer); input_ids int32; UNetXL timestep float [1] and output
  `latent`; vae_encoder images -> latent, vae_decoder latent -> images. The demo writes no config.json files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from . import clip_vocab, configs, tiny
from .graph import NP_TO_ONNX, Graph, save

E1 = 24  # text_encoder hidden size (768 in SDXL)
E2 = 32  # text_encoder_2 hidden size (1280 in SDXL)
POOLED = 40  # text_encoder_2 projection size = UNet text_embeds (1280 in SDXL)
TEXT_LAYERS = 2
TIME_IDS = 6
ADD_TIME_DIM = 8  # addition_time_embed_dim (256 in SDXL)
SDXL_SCALING_FACTOR = 0.13025
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class Variant:
    name: str
    layout: str = "optimum"  # or "ortdemo"
    dtype: type = np.float32
    ids_dtype: type = np.int64
    timestep: str = "float32[]"  # "int64[B]", "float32[]", "float16[]", "float32[1]"
    vae_kind: str = "kl"  # or "tiny" (TAESDXL, AutoencoderTiny)
    vae_out: str = "latent_sample"
    scheduler: str = "euler_a"  # sdxl-turbo; "lcm" for SDXL + LCM-LoRA
    external_unet: bool = False  # unet/model.onnx + unet/model.onnx_data
    seed: int = 0
    # Fused UNet + ControlNet (see tiny.CONTROLNET_INPUTS).
    controlnets: int = 0
    controlnet_layout: str = "ortdemo"

    @property
    def scaling_factor(self) -> float:
        return 1.0 if self.vae_kind == "tiny" else SDXL_SCALING_FACTOR


VARIANTS = [
    Variant("tiny-sdxl", external_unet=True, seed=31),
    Variant("tiny-sdxl-fp16", dtype=np.float16, timestep="float16[]", vae_kind="tiny", scheduler="lcm", seed=32),
    Variant("tiny-sdxl-ortdemo", layout="ortdemo", ids_dtype=np.int32, timestep="float32[1]", seed=33),
    Variant("tiny-sdxl-controlnet", layout="ortdemo", ids_dtype=np.int32, timestep="float32[1]", seed=34,
            controlnets=1, controlnet_layout="ortdemo"),
]


def _rng(v: Variant, part: int) -> np.random.Generator:
    return np.random.default_rng([v.seed, part])


def _ln(g: Graph, x, dim: int):
    return g.op("LayerNormalization", [x, g.init("ln_s", np.ones(dim)), g.init("ln_b", np.zeros(dim))],
                axis=-1, epsilon=1e-5)


def text_encoder(v: Variant, second: bool) -> Graph:
    """CLIPTextModel (second=False) or CLIPTextModelWithProjection (second=True), TEXT_LAYERS causal layers."""
    g = Graph("text_encoder_2" if second else "text_encoder", v.dtype)
    rng = _rng(v, 12 if second else 11)
    E = E2 if second else E1
    ids = g.input("input_ids", NP_TO_ONNX[np.dtype(v.ids_dtype)], ["batch_size", "sequence_length"])
    ids64 = g.cast(ids, TensorProto.INT64) if v.ids_dtype != np.int64 else ids
    h = g.op("Gather", [g.init("token_embedding", rng.standard_normal((49408, E)) * 0.5), ids64], axis=0)
    seq = g.op("Slice", [g.op("Shape", [ids]), g.i64([1]), g.i64([2])])
    pos = g.op("Slice", [g.init("position_embedding", rng.standard_normal((77, E)) * 0.2), g.i64([0]), seq,
                         g.i64([0])])
    h = g.add(h, pos)
    mask = g.op("Slice", [g.init("causal_mask", np.triu(np.full((77, 77), -1e4), 1)), g.i64([0, 0]),
                          g.op("Concat", [seq, seq], axis=0), g.i64([0, 1])])
    hidden = [h]
    for _ in range(TEXT_LAYERS):
        x = _ln(g, h, E)
        q = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="q")
        k = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="k")
        val = g.linear(x, rng.standard_normal((E, E)) / np.sqrt(E), base="v")
        s = g.add(g.mul(g.matmul(q, g.op("Transpose", [k], perm=[0, 2, 1])), g.const(1.0 / np.sqrt(E))), mask)
        a = g.matmul(g.op("Softmax", [s], axis=-1), val)
        h = g.add(h, g.linear(a, rng.standard_normal((E, E)) / np.sqrt(E), base="o"))
        x = _ln(g, h, E)
        m = g.linear(x, rng.standard_normal((E, 2 * E)) / np.sqrt(E), np.zeros(2 * E), base="fc1")
        m = g.mul(m, g.sigmoid(g.mul(m, g.const(1.702))))
        h = g.add(h, g.linear(m, rng.standard_normal((2 * E, E)) / np.sqrt(2 * E), np.zeros(E), base="fc2"))
        hidden.append(h)
    last = _ln(g, h, E)
    # Pooled: the final hidden state at the eos token (the largest id), as CLIP does.
    eos_pos = g.op("ArgMax", [g.cast(ids, TensorProto.FLOAT)], axis=1, keepdims=1)
    hot = g.op("Equal", [g.op("Range", [g.i64(0), g.op("Squeeze", [seq, g.i64([0])]), g.i64(1)]), eos_pos])
    hot = g.op("Unsqueeze", [g.cast(hot, g.ft), g.i64([2])])
    pooled = g.op("ReduceSum", [g.mul(last, hot), g.i64([1])], keepdims=0)
    if second:
        pooled = g.linear(pooled, rng.standard_normal((E, POOLED)) / np.sqrt(E), base="text_projection")
    seq_shape = ["batch_size", "sequence_length", E]
    pooled_shape = ["batch_size", POOLED if second else E]
    if v.layout == "ortdemo":
        if second:
            g.output(pooled, "text_embeddings", g.ft, pooled_shape)
        else:
            g.output(last, "text_embeddings", g.ft, seq_shape)
        g.output(hidden[-2], "hidden_states", g.ft, seq_shape)
    else:
        if second:
            g.output(pooled, "text_embeds", g.ft, pooled_shape)
            g.output(last, "last_hidden_state", g.ft, seq_shape)
        else:
            g.output(last, "last_hidden_state", g.ft, seq_shape)
            g.output(pooled, "pooler_output", g.ft, pooled_shape)
        for i, hs in enumerate(hidden):
            g.output(hs, f"hidden_states.{i}", g.ft, seq_shape)
    return g


def _timestep(g: Graph, kind: str):
    """Declare the timestep input; return it as float32 [B] (broadcast over the batch of `sample`)."""
    if kind == "float32[1]":
        t = g.input("timestep", TensorProto.FLOAT, [1])
        batch = g.op("Slice", [g.op("Shape", ["sample"]), g.i64([0]), g.i64([1])])
        return g.op("Expand", [t, batch])
    return tiny.timestep_input(g, kind)


def unet(v: Variant) -> Graph:
    g = Graph("unet", v.dtype)
    rng = _rng(v, 2)
    C, E, d = tiny.C_UNET, E1 + E2, 16
    sample = g.input("sample", g.ft, ["batch_size", 4, "height", "width"])
    tf = _timestep(g, v.timestep)
    ehs = g.input("encoder_hidden_states", g.ft, ["batch_size", "sequence_length", E])
    text_embeds = g.input("text_embeds", g.ft, ["batch_size", POOLED])
    time_ids = g.input("time_ids", g.ft, ["batch_size", TIME_IDS])
    temb = tiny.time_embedding(g, tf, 32)
    temb = g.silu(g.linear(temb, rng.standard_normal((32, 4 * C)) / np.sqrt(32) * 1.5, np.zeros(4 * C), base="t1"))
    temb = g.linear(temb, rng.standard_normal((4 * C, C)) / np.sqrt(4 * C), np.zeros(C), base="t2")
    # addition_embed_type "text_time": sinusoidal embedding of each time id, concatenated with text_embeds.
    tid = time_ids if g.dtype == np.float32 else g.cast(time_ids, TensorProto.FLOAT)
    tid_emb = tiny.time_embedding(g, g.op("Reshape", [tid, g.i64([-1])]), ADD_TIME_DIM)
    tid_emb = g.op("Reshape", [tid_emb, g.i64([-1, TIME_IDS * ADD_TIME_DIM])])
    add = g.op("Concat", [text_embeds, tid_emb], axis=1)
    n_add = POOLED + TIME_IDS * ADD_TIME_DIM
    add = g.silu(g.linear(add, rng.standard_normal((n_add, 4 * C)) / np.sqrt(n_add) * 1.5, np.zeros(4 * C),
                          base="add1"))
    temb = g.add(temb, g.linear(add, rng.standard_normal((4 * C, C)) / np.sqrt(4 * C), np.zeros(C), base="add2"))
    temb = g.op("Unsqueeze", [temb, g.i64([2, 3])])
    h = g.conv(sample, tiny._he(rng, (C, 4, 3, 3)), np.zeros(C), base="conv_in")
    h = g.add(h, temb)
    if v.controlnets:
        h = g.add(h, tiny.controlnet_residuals(g, v, sample, temb))
    h = g.conv(g.silu(h), tiny._he(rng, (C, C, 3, 3)), np.zeros(C), base="res")
    # Cross-attention of the pixels on the text (both encoders' halves feed keys and values).
    shape = g.op("Shape", [h])
    seq = g.op("Transpose", [g.op("Reshape", [h, g.i64([0, 0, -1])])], perm=[0, 2, 1])
    q = g.linear(seq, rng.standard_normal((C, d)) / np.sqrt(C), base="attn_q")
    k = g.linear(ehs, rng.standard_normal((E, d)) * (2.0 / np.sqrt(E)), base="attn_k")
    val = g.linear(ehs, rng.standard_normal((E, d)) / np.sqrt(E), base="attn_v")
    s = g.mul(g.matmul(q, g.op("Transpose", [k], perm=[0, 2, 1])), g.const(1.0 / np.sqrt(d)))
    o = g.matmul(g.op("Softmax", [s], axis=-1), val)
    o = g.linear(o, rng.standard_normal((d, C)) * (2.0 / np.sqrt(d)), base="attn_o")
    h = g.add(h, g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1]), shape]))
    out = g.conv(g.silu(h), tiny._he(rng, (4, C, 3, 3), 0.7), np.zeros(4), base="conv_out")
    g.output(out, "latent" if v.layout == "ortdemo" else "out_sample", g.ft, ["batch_size", 4, "height", "width"])
    return g


def _vae_variant(v: Variant) -> tiny.Variant:
    return tiny.Variant(v.name, dtype=v.dtype, vae_out=v.vae_out, vae_kind=v.vae_kind,
                        scaling_factor=v.scaling_factor, seed=v.seed)


def rename(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs / outputs (and every node reference to them)."""
    gr = model.graph
    for vi in list(gr.input) + list(gr.output):
        vi.name = names.get(vi.name, vi.name)
    for node in gr.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    onnx.checker.check_model(model)
    return model


def graphs(v: Variant) -> dict[str, onnx.ModelProto]:
    """Component folder -> model, in the variant's layout."""
    doc = f"{v.name}: random weights, for tests"
    enc = tiny.vae_encoder(_vae_variant(v)).model(f"{doc} (vae_encoder)")
    dec = tiny.vae_decoder(_vae_variant(v)).model(f"{doc} (vae_decoder)")
    if v.layout == "ortdemo":
        enc = rename(enc, {"sample": "images", v.vae_out: "latent", "latent_sample": "latent"})
        dec = rename(dec, {"latent_sample": "latent", "sample": "images"})
    return {
        "text_encoder": text_encoder(v, False).model(f"{doc} (text_encoder)"),
        "text_encoder_2": text_encoder(v, True).model(f"{doc} (text_encoder_2)"),
        "unet": unet(v).model(f"{doc} (unet)"),
        "vae_encoder": enc,
        "vae_decoder": dec,
    }


# ---------------------------------------------------------------- configs and files

def _model_index(v: Variant) -> str:
    sched = {"euler_a": "EulerAncestralDiscreteScheduler", "lcm": "LCMScheduler"}[v.scheduler]
    vae = "AutoencoderTiny" if v.vae_kind == "tiny" else "AutoencoderKL"
    return configs.dump({
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": configs.DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", sched],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", vae],
    })


def scheduler_config(kind: str) -> str:
    if kind == "euler_a":  # sdxl-turbo
        cfg = {"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
               "prediction_type": "epsilon", "rescale_betas_zero_snr": False, "steps_offset": 1,
               "timestep_spacing": "trailing", "trained_betas": None,
               "_diffusers_version": configs.DIFFUSERS_VERSION}
        return configs.dump(cfg)
    return configs.scheduler_config(kind)


def _text_config(v: Variant, second: bool, dtype_name: str) -> str:
    cfg = json.loads(configs.text_encoder_config(E2 if second else E1, TEXT_LAYERS, 2, 2 * (E2 if second else E1),
                                                 dtype_name))
    if second:
        cfg["architectures"] = ["CLIPTextModelWithProjection"]
        cfg["hidden_act"] = "gelu"
        cfg["projection_dim"] = POOLED
    return configs.dump(cfg)


def _unet_config() -> str:
    return configs.unet_config(E1 + E2, 8, [tiny.C_UNET], 8, extra={
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": ADD_TIME_DIM,
        "projection_class_embeddings_input_dim": POOLED + TIME_IDS * ADD_TIME_DIM,
    })


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if not external:
        save(model, path)
        return
    # As optimum writes a graph over 2 GB: every weight in one model.onnx_data beside the graph.
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024, convert_attribute=False)


def expected_files(v: Variant) -> list[str]:
    files = ["scheduler/scheduler_config.json"]
    for t in ("tokenizer", "tokenizer_2"):
        files += [f"{t}/special_tokens_map.json", f"{t}/tokenizer_config.json"]
    files += [f"{c}/model.onnx" for c in COMPONENTS]
    if v.layout == "optimum":
        files += ["model_index.json"] + [f"{c}/config.json" for c in COMPONENTS]
    if v.external_unet:
        files.append("unet/model.onnx_data")
    return files


def write(dest: Path, v: Variant, vocab, merges, tok_cache) -> None:
    # SDXL's first tokenizer pads with <|endoftext|>, the second with "!" (sdxl-turbo, SDXL base).
    clip_vocab.write_tokenizer(dest / "tokenizer", vocab, merges, pad="<|endoftext|>", files="slow+fast",
                               cache=tok_cache)
    clip_vocab.write_tokenizer(dest / "tokenizer_2", vocab, merges, pad="!", files="slow+fast", cache=tok_cache)
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler/scheduler_config.json").write_text(scheduler_config(v.scheduler))
    dtype_name = "float16" if v.dtype == np.float16 else "float32"
    if v.vae_kind == "tiny":
        vae_cfg = configs.vae_tiny_config(tiny.C_VAE)
    else:
        vae_cfg = configs.vae_kl_config(SDXL_SCALING_FACTOR, 64, [tiny.C_VAE] * 4)
    cfgs = {
        "text_encoder": _text_config(v, False, dtype_name),
        "text_encoder_2": _text_config(v, True, dtype_name),
        "unet": _unet_config(),
        "vae_encoder": vae_cfg,
        "vae_decoder": vae_cfg,
    }
    if v.layout == "optimum":
        (dest / "model_index.json").write_text(_model_index(v))
    for comp, m in graphs(v).items():
        (dest / comp).mkdir(parents=True, exist_ok=True)
        _save(m, dest / comp / "model.onnx", external=v.external_unet and comp == "unet")
        if v.layout == "optimum":  # the ORT demo writes graphs only
            (dest / comp / "config.json").write_text(cfgs[comp])
