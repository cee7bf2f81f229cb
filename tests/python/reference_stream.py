#!/usr/bin/env python3
"""Independent reference of the i2i per-frame math (StreamDiffusion img2img), numpy + onnxruntime.

Written from the reference notes and StreamDiffusion's pipeline.py (cumulo-autumn/StreamDiffusion b623251),
not from the Rust engine. Each frame is computed on its own, step by step (no stream batch): with the
fixed per-seed noise the stream batch of the engine must give the same result per frame.

    python tests/python/reference_stream.py --model DIR --width W --height H --inputs DIR --prompt P \
        --negative-prompt NP --seed S --t-index-list 32,45 --num-inference-steps 50 --guidance-scale G \
        --delta D --cfg-type none|full|self|initialize --add-noise 0|1 --out DIR [--png] [--dump] \
        [--latent-feedback S --batch-size B] [--controlnet-scales 1.0,0.5] [--prompt-weighting 0|1]
        [--ip-adapter-image FILE --ip-adapter-scale S|S1,S2,...] [--lora FILE[:SCALE][,FILE[:SCALE]...]]

Reads INPUTS/frame_%03d.rgb (packed RGB8, H*W*3 bytes) from 000 on while they exist, writes
OUT/frame_%03d.f32 (float32 little-endian, planar [3, H, W] in [0, 1]).

Where this deliberately differs from upstream StreamDiffusion:
- frames are independent: the stock noise of every frame starts at S_0 = N[0] (upstream, with one step,
  carries the stock noise over from the previous frame and starts it at zero);
- the VAE latent is the posterior mean (upstream samples the posterior with its generator);
- the noise is i2i-noise-v1 from the seed (upstream ignores the seed in its wrapper and uses torch.randn);
- no junk frames: a frame's result never depends on earlier frames or an empty buffer;
- full / initialize keep the negative prompt embedding (upstream's update_prompt drops it).

ControlNet (a fused UNet + ControlNet graph: controlnet_images / controlnet_scales as ONNX Runtime's demo, or
controlnet_conds / conditioning_scales as diffusers' export): every UNet row of frame k gets its control images
[num, 1, 3, H, W] = v / 255 of INPUTS/control_%03d_%d.rgb (frame, ControlNet) where present, else of the frame
itself, and the scales of --controlnet-scales (default 1 for each; one value applies to all).

Styles (reference_style.py): prompts are weighted as A1111 weights them ((text:1.3), [text]; --prompt-weighting 0
encodes them verbatim); a UNet with `ipadapter_scale` gets the image tokens of --ip-adapter-image (zero tokens
without one) after the text rows, the negative tokens on the guidance rows, and --ip-adapter-scale; a UNet with
LoRA inputs gets the --lora adapters bound side by side (zeros without one).

Latent feedback (the livepeer fork's formula): with S > 0 the scaled latent of frame k becomes
(1 - S) * z_k + S * z_prev before the noise is added, z_prev being the final latent x0 of the newest frame
that is out when frame k enters the stream batch. With n steps and B frames per call (full calls), frame k
enters at call c = k // B and the newest frame out then is (c - n + 1) * B - 1 (none while negative).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import i2i_noise  # noqa: E402
import onnx_adapter  # noqa: E402
import reference_style as style  # noqa: E402

CFG_TYPES = ("none", "full", "self", "initialize")


class RefError(Exception):
    pass


# ---------------------------------------------------------------- scheduler (diffusers LCMScheduler)

def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) as ATen computes it on the CPU: the step in float32,
    then start + step * i for the first half and end - step * (steps - 1 - i) for the second, each a fused
    multiply-add rounded once to float32 (emulated exactly in float64)."""
    s = np.float32(start)
    e = np.float32(end)
    step = np.float32((e - s) / np.float32(steps - 1))
    idx = np.arange(steps, dtype=np.float64)
    half = steps // 2
    out = np.where(idx < half, np.float64(s) + np.float64(step) * idx,
                   np.float64(e) - np.float64(step) * (steps - 1 - idx))
    return out.astype(np.float32)


def alphas_cumprod(cfg: dict) -> np.ndarray:
    n = int(cfg.get("num_train_timesteps", 1000))
    b0 = float(cfg.get("beta_start", 0.00085))
    b1 = float(cfg.get("beta_end", 0.012))
    sched = cfg.get("beta_schedule", "scaled_linear")
    if cfg.get("trained_betas"):
        betas = np.asarray(cfg["trained_betas"], dtype=np.float32)
    elif sched == "scaled_linear":
        betas = torch_linspace_f32(b0 ** 0.5, b1 ** 0.5, n) ** 2
    elif sched == "linear":
        betas = torch_linspace_f32(b0, b1, n)
    else:
        raise RefError(f"scheduler_config.json: beta_schedule {sched!r} is not supported "
                       "(expected scaled_linear or linear)")
    alphas = (np.float32(1.0) - betas).astype(np.float32)
    # torch.cumprod on the CPU accumulates in double and stores float32.
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def lcm_timesteps(num_train: int, original_steps: int, num_inference_steps: int) -> np.ndarray:
    """LCMScheduler.set_timesteps(num_inference_steps) with strength 1."""
    if original_steps > num_train:
        raise RefError(f"original_inference_steps {original_steps} > num_train_timesteps {num_train}")
    k = num_train // original_steps
    origin = np.arange(1, original_steps + 1) * k - 1
    skipping = len(origin) // num_inference_steps
    if num_inference_steps < 1 or skipping < 1 or num_inference_steps > original_steps:
        raise RefError(f"num_inference_steps {num_inference_steps} must be in 1..{original_steps}")
    origin = origin[::-1].copy()
    idx = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
    return origin[idx].astype(np.int64)


def schedule(cfg: dict, t_index_list: list[int], num_inference_steps: int) -> dict:
    """Per step i: t, alpha = sqrt(abar), beta = sqrt(1 - abar), c_skip, c_out (float32)."""
    abar = alphas_cumprod(cfg)
    original = int(cfg.get("original_inference_steps", 50))
    scaling = float(cfg.get("timestep_scaling", 10.0))
    ts_all = lcm_timesteps(len(abar), original, num_inference_steps)
    for i in t_index_list:
        if not 0 <= i < len(ts_all):
            raise RefError(f"t-index {i} is outside 0..{len(ts_all) - 1} for {num_inference_steps} steps")
    ts = ts_all[t_index_list]
    a = abar[ts].astype(np.float32)
    s = (ts.astype(np.float32) * np.float32(scaling)).astype(np.float32)
    sd2 = np.float32(0.25)
    return {
        "timesteps": ts,
        "alphas_cumprod": a,
        "alpha": np.sqrt(a).astype(np.float32),
        "beta": np.sqrt(np.float32(1.0) - a).astype(np.float32),
        "c_skip": (sd2 / (s * s + sd2)).astype(np.float32),
        "c_out": (s / np.sqrt(s * s + sd2)).astype(np.float32),
    }


# ---------------------------------------------------------------- model

ORT_TO_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}


def _read_json(path: Path) -> dict:
    return style.read_json(path, RefError)


class Model:
    """The graphs of one model directory. SD 1.x / 2.x: one text encoder; SDXL (a UNet with `text_embeds`):
    two, in the optimum layout or in ONNX Runtime's Stable Diffusion demo layout."""

    def __init__(self, root: Path, threads: int):
        import onnxruntime as ort
        from transformers import CLIPTokenizer

        self.root = root
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = {}
        comps = ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
        if (root / "text_encoder_2").is_dir():
            comps.append("text_encoder_2")
        for comp in comps:
            p = root / comp / "model.onnx"
            if not p.is_file():
                raise RefError(f"{p}: missing")
            self.sess[comp] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        self.xl = "text_embeds" in self._inputs("unet")
        unet_in = self._inputs("unet")
        self.cn_images = next((n for n in ("controlnet_images", "controlnet_conds") if n in unet_in), None)
        self.cn_scales = next((n for n in ("controlnet_scales", "conditioning_scales") if n in unet_in), None)
        self.controlnets = int(unet_in[self.cn_images].shape[0]) if self.cn_images else 0
        self.cn_scales_shape = [self.controlnets] + ([1] if self.cn_scales and
                                                     len(unet_in[self.cn_scales].shape) == 2 else [])
        if self.xl and "text_encoder_2" not in self.sess:
            raise RefError(f"{root / 'text_encoder_2'}: missing (the UNet takes text_embeds: an SDXL model)")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
        if self.xl:
            self.tokenizer_2 = CLIPTokenizer.from_pretrained(str(root / "tokenizer_2"))
            # diffusers' StableDiffusionXLPipeline default (True); the ORT demo writes no model_index.json.
            index = root / "model_index.json"
            self.force_zeros = bool(_read_json(index).get("force_zeros_for_empty_prompt", True)) \
                if index.is_file() else True
        # IP-Adapter: the last N rows of encoder_hidden_states are image tokens, one scale per IP layer.
        self.ip_layers = 0
        if "ipadapter_scale" in unet_in:
            ip_shape, ehs_shape = unet_in["ipadapter_scale"].shape, unet_in["encoder_hidden_states"].shape
            if len(ip_shape) != 1 or not isinstance(ip_shape[0], int) or not isinstance(ehs_shape[1], int):
                raise RefError(f"{root / 'unet' / 'model.onnx'}: ipadapter_scale {ip_shape} and "
                               f"encoder_hidden_states {ehs_shape} need a fixed layer count and sequence length")
            self.ip_layers, self.ip_tokens = ip_shape[0], ehs_shape[1] - 77
        self.lora_slots = style.lora_slots(self.sess["unet"].get_inputs())
        self.weighting = True
        self.sched_cfg = _read_json(root / "scheduler" / "scheduler_config.json")
        vae_cfg_path = root / "vae_decoder" / "config.json"
        default_sf = 0.13025 if self.xl else 0.18215
        vae_cfg = _read_json(vae_cfg_path) if (vae_cfg_path.is_file() or not self.xl) else {}
        self.sf = np.float32(vae_cfg.get("scaling_factor", default_sf))

    def _inputs(self, comp):
        return {i.name: i for i in self.sess[comp].get_inputs()}

    def _outputs(self, comp) -> list[str]:
        return [o.name for o in self.sess[comp].get_outputs()]

    def _run(self, comp, feeds: dict, out_names) -> list[np.ndarray]:
        ins = self._inputs(comp)
        cast = {}
        for name, arr in feeds.items():
            if name not in ins:
                raise RefError(f"{self.root / comp / 'model.onnx'}: no input named {name!r} "
                               f"(has {sorted(ins)})")
            dt = ORT_TO_NP.get(ins[name].type)
            if dt is None:
                raise RefError(f"{comp}: input {name} has unsupported type {ins[name].type}")
            cast[name] = np.asarray(arr).astype(dt)
        outs = self.sess[comp].run(out_names, cast)
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def _ids(self, tokenizer, text: str) -> np.ndarray:
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        return np.asarray([ids], dtype=np.int64)

    def _penultimate(self, comp: str) -> str:
        """The name of the penultimate layer's hidden state: `hidden_states` (ORT demo) or the
        second-highest of `hidden_states.0` .. `hidden_states.L` (optimum)."""
        outs = self._outputs(comp)
        if "hidden_states" in outs:
            return "hidden_states"
        layers = sorted(int(n.split(".")[1]) for n in outs if n.startswith("hidden_states."))
        if len(layers) < 2:
            raise RefError(f"{self.root / comp / 'model.onnx'}: no hidden_states.N outputs (has {outs})")
        return f"hidden_states.{layers[-1] - 1}"

    def _weighted_ids(self, tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
        """ids [1, 77] and per-token weights [77] (all 1 with prompt weighting off)."""
        if not self.weighting:
            return self._ids(tokenizer, text), np.ones(77, np.float32)
        ids, w = style.weighted_tokens(tokenizer, text)
        return ids[None], w

    def encode_prompt(self, text: str) -> dict:
        """The UNet's conditioning inputs for one prompt: encoder_hidden_states [1, 77, E] and, for SDXL,
        text_embeds [1, P] (time_ids are added per frame size by `conditioning`)."""
        ids, w = self._weighted_ids(self.tokenizer, text)
        if not self.xl:
            outs = self._outputs("text_encoder")
            name = "last_hidden_state" if "last_hidden_state" in outs else outs[0]
            z = self._run("text_encoder", {"input_ids": ids}, [name])[0]
            return {"encoder_hidden_states": style.apply_weights(z, w)}
        # diffusers StableDiffusionXLPipeline.encode_prompt: hidden_states[-2] of both encoders, concatenated;
        # pooled = text_embeds of the second encoder (the ORT demo names it text_embeddings). Weights apply to
        # each encoder's hidden states on its own; the pooled vector stays unweighted.
        h1 = style.apply_weights(self._run("text_encoder", {"input_ids": ids}, [self._penultimate("text_encoder")])[0],
                                 w)
        outs2 = self._outputs("text_encoder_2")
        pooled_name = "text_embeds" if "text_embeds" in outs2 else "text_embeddings"
        ids2, w2 = self._weighted_ids(self.tokenizer_2, text)
        h2, pooled = self._run("text_encoder_2", {"input_ids": ids2},
                               [self._penultimate("text_encoder_2"), pooled_name])
        return {"encoder_hidden_states": np.concatenate([h1, style.apply_weights(h2, w2)], axis=-1),
                "text_embeds": pooled}

    def encode_negative(self, text: str) -> dict:
        """SDXL with force_zeros_for_empty_prompt and an empty negative prompt: zeros (as diffusers)."""
        if self.xl and self.force_zeros and text == "":
            return {k: np.zeros_like(v) for k, v in self.encode_prompt("").items()}
        return self.encode_prompt(text)

    def conditioning(self, emb: dict, height: int, width: int) -> dict:
        """Adds SDXL's time_ids: (original height, width, crop top, left, target height, width)."""
        if not self.xl:
            return emb
        return {**emb, "time_ids": np.asarray([[height, width, 0, 0, height, width]], dtype=np.float32)}

    def vae_encode(self, x: np.ndarray) -> np.ndarray:
        outs = self._outputs("vae_encoder")
        name = next((n for n in ("latent_sample", "latent_parameters", "latent") if n in outs), outs[0])
        in_name = "images" if "images" in self._inputs("vae_encoder") else "sample"
        z = self._run("vae_encoder", {in_name: x}, [name])[0]
        if z.shape[1] == 8:  # mean and logvar: use the mean
            z = z[:, :4]
        elif z.shape[1] != 4:
            raise RefError(f"vae_encoder output {name} has {z.shape[1]} channels, expected 4 or 8")
        return z

    def vae_decode(self, z: np.ndarray) -> np.ndarray:
        outs = self._outputs("vae_decoder")
        name = next((n for n in ("sample", "images") if n in outs), outs[0])
        in_name = "latent" if "latent" in self._inputs("vae_decoder") else "latent_sample"
        return self._run("vae_decoder", {in_name: z}, [name])[0]

    def unet(self, x: np.ndarray, t: int, cond: dict, control: dict | None = None) -> np.ndarray:
        """control: {"images": [num, 1, 3, H, W], "scales": [num]} for a ControlNet graph."""
        ts = self._inputs("unet")["timestep"]
        ts_val = np.asarray(t) if len(ts.shape) == 0 else np.full((x.shape[0],), t)
        outs = self._outputs("unet")
        name = next((n for n in ("out_sample", "latent", "noise_pred") if n in outs), outs[0])
        feeds = {"sample": x, "timestep": ts_val, **cond}
        if self.controlnets:
            if control is None:
                raise RefError("the UNet takes control images: none given")
            feeds[self.cn_images] = control["images"]
            feeds[self.cn_scales] = np.asarray(control["scales"], dtype=np.float32).reshape(self.cn_scales_shape)
        return self._run("unet", feeds, [name])[0]


# ---------------------------------------------------------------- per-frame math

def feedback_source(k: int, n: int, batch: int) -> int | None:
    """The frame whose final latent frame k blends with (latent feedback), or None."""
    src = (k // batch - n + 1) * batch - 1
    return src if src >= 0 else None


def process_frame(m: Model, rgb: np.ndarray, p: dict, sch: dict, noise: np.ndarray, cond: dict, uncond: dict,
                  dump: dict | None = None, z_prev: np.ndarray | None = None,
                  control: dict | None = None) -> np.ndarray:
    """rgb: [H, W, 3] uint8 -> [3, H, W] float32 in [0, 1]. cond / uncond: the UNet's conditioning inputs
    (encoder_hidden_states; for SDXL also text_embeds and time_ids). `dump` collects the intermediate tensors
    (dump["x0_final"] is the final scaled latent, the next frames' z_prev). z_prev: the latent-feedback source
    (used when p["latent_feedback"] > 0)."""
    dump = {} if dump is None else dump
    x = (rgb.astype(np.float32) / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    z = m.vae_encode(x) * m.sf
    dump["x"], dump["z"] = x, z
    fb = np.float32(p.get("latent_feedback", 0.0))
    if fb > 0 and z_prev is not None:
        z = (np.float32(1.0) - fb) * z + fb * z_prev
        dump["z_blend"] = z
    n = len(sch["timesteps"])
    alpha, beta, c_skip, c_out = sch["alpha"], sch["beta"], sch["c_skip"], sch["c_out"]
    g = np.float32(p["guidance_scale"])
    d = np.float32(p["delta"])
    cfg = p["cfg_type"] if (p["cfg_type"] != "none" and g > 1.0) else "none"

    X = alpha[0] * z + beta[0] * noise[0:1]
    S = noise[0:1].copy()  # stock noise (self / initialize)
    x0 = None
    for i in range(n):
        t = int(sch["timesteps"][i])
        eps_c = m.unet(X, t, cond, control)
        if cfg == "full":
            eps_u = m.unet(X, t, uncond, control)
            eps = eps_u + g * (eps_c - eps_u)
        elif cfg in ("self", "initialize"):
            if cfg == "initialize" and i == 0:
                S = m.unet(X, t, uncond, control)
            eps_u = d * S
            eps = eps_u + g * (eps_c - eps_u)
        else:
            eps = eps_c
        x0 = c_out[i] * (X - beta[i] * eps) / alpha[i] + c_skip[i] * X
        dump[f"X_{i}"], dump[f"eps_c_{i}"], dump[f"eps_{i}"], dump[f"x0_{i}"] = X, eps_c, eps, x0
        if cfg in ("self", "initialize"):
            dump[f"S_{i}"] = S
        if i + 1 < n:
            if cfg in ("self", "initialize"):
                D = c_out[i] * (beta[i] * S - beta[i] * eps) / alpha[i] + c_skip[i] * (beta[i] * S)
                S = noise[i + 1:i + 2] + (alpha[i + 1] / beta[i + 1]) * D
            X = alpha[i + 1] * x0
            if p["add_noise"]:
                X = X + beta[i + 1] * noise[i + 1:i + 2]
    dump["x0_final"] = x0
    y = m.vae_decode((x0 / m.sf).astype(np.float32))
    dump["y"] = y
    return np.clip(y[0] / np.float32(2.0) + np.float32(0.5), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- CLI

def parse_args(argv):
    ap = argparse.ArgumentParser(description="i2i per-frame reference (numpy + onnxruntime)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--prompt", default="")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--t-index-list", default="32,45")
    ap.add_argument("--num-inference-steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=1.2)
    ap.add_argument("--delta", type=float, default=1.0)
    ap.add_argument("--cfg-type", choices=CFG_TYPES, default="self")
    ap.add_argument("--add-noise", type=int, choices=(0, 1), default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--latent-feedback", type=float, default=0.0,
                    help="temporal feedback S in [0, 1]: (1 - S) * z + S * z_prev")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="frames per engine call (which earlier frame is z_prev with latent feedback)")
    ap.add_argument("--controlnet-scales", default="",
                    help="ControlNet scales, comma-separated (one applies to all; default 1 each)")
    ap.add_argument("--prompt-weighting", type=int, choices=(0, 1), default=1,
                    help="1: (text:1.3) / [text] weights as A1111 (default); 0: prompts verbatim")
    ap.add_argument("--ip-adapter-image", type=Path, default=None,
                    help="the IP-Adapter picture (any file PIL reads) for a UNet with ipadapter_scale")
    ap.add_argument("--ip-adapter-scale", default="1.0",
                    help="one IP-Adapter scale, or one per IP layer, comma-separated (default 1.0)")
    ap.add_argument("--lora", default="", help="LoRA adapters FILE[:SCALE][,FILE[:SCALE]...] (.onnx_adapter)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--png", action="store_true", help="also write OUT/frame_%%03d.png")
    ap.add_argument("--dump", action="store_true",
                    help="also write OUT/frame_%%03d.npz with the intermediate tensors (x, z, X_i, eps_i, x0_i, "
                         "S_i, y) and OUT/common.npz with the noise, the schedule and the embeddings")
    return ap.parse_args(argv)


def style_feeds(m: Model, args) -> tuple[dict, dict, dict]:
    """The UNet inputs of the IP-Adapter and LoRA options: (cond extras, uncond extras, image tokens)."""
    common: dict = {}
    tokens: dict = {}
    if args.ip_adapter_image is not None and not m.ip_layers:
        raise RefError(f"--ip-adapter-image: {m.root / 'unet' / 'model.onnx'} has no ipadapter_scale input "
                       "(not an IP-Adapter model)")
    if m.ip_layers:
        try:
            scales = [float(s) for s in args.ip_adapter_scale.split(",") if s.strip()]
        except ValueError:
            raise RefError(f"--ip-adapter-scale {args.ip_adapter_scale!r}: expected numbers")
        common["ipadapter_scale"] = style.scale_vector(scales, m.ip_layers)
        D = m._inputs("unet")["encoder_hidden_states"].shape[2]
        zero = np.zeros((1, m.ip_tokens, D), np.float32)
        tokens = {"tokens": zero, "negative_tokens": zero}
        if args.ip_adapter_image is not None:
            from PIL import Image

            side = style.ImageSide(m.root, args.threads)
            try:
                rgb = np.asarray(Image.open(args.ip_adapter_image).convert("RGB"))
            except (OSError, ValueError) as e:
                raise RefError(f"--ip-adapter-image {args.ip_adapter_image}: cannot decode ({e})")
            tokens = {"tokens": side.tokens(rgb), "negative_tokens": side.negative_tokens()}
    lora = style.parse_lora_list(args.lora)
    if lora and not m.lora_slots:
        raise RefError(f"--lora: {m.root / 'unet' / 'model.onnx'} has no LoRA inputs (NAME.lora_A.weight)")
    if m.lora_slots:
        active = []
        for path, scale in lora:
            adapter = onnx_adapter.read(path)
            style.check_adapter(adapter, m.lora_slots, path)
            active.append((adapter, scale))
        common.update(style.lora_feeds(m.lora_slots, active))
    return common, dict(common), tokens


def run(args) -> int:
    W, H = args.width, args.height
    if W <= 0 or H <= 0 or W % 8 or H % 8:
        raise RefError(f"width and height must be positive multiples of 8, got {W}x{H}")
    try:
        t_index = [int(s) for s in args.t_index_list.split(",") if s.strip() != ""]
    except ValueError:
        raise RefError(f"--t-index-list {args.t_index_list!r}: expected comma-separated integers")
    if not t_index:
        raise RefError("--t-index-list is empty")
    if not args.model.is_dir():
        raise RefError(f"{args.model}: not a directory")
    m = Model(args.model, args.threads)
    m.weighting = bool(args.prompt_weighting)
    sch = schedule(m.sched_cfg, t_index, args.num_inference_steps)
    noise = i2i_noise.init_noise(args.seed, len(t_index), H // 8, W // 8)
    cond = m.conditioning(m.encode_prompt(args.prompt), H, W)
    uncond = m.conditioning(m.encode_negative(args.negative_prompt), H, W)
    try:
        extra = style_feeds(m, args)
    except (style.StyleError, onnx_adapter.AdapterError) as e:
        raise RefError(str(e))
    cond, uncond = {**cond, **extra[0]}, {**uncond, **extra[1]}
    if "tokens" in extra[2]:
        cond = style.append_tokens(cond, extra[2]["tokens"])
        uncond = style.append_tokens(uncond, extra[2]["negative_tokens"])
    if not 0.0 <= args.latent_feedback <= 1.0:
        raise RefError(f"--latent-feedback {args.latent_feedback}: expected 0 to 1")
    if args.batch_size < 1:
        raise RefError(f"--batch-size {args.batch_size}: expected 1 or more")
    p = {"guidance_scale": args.guidance_scale, "delta": args.delta, "cfg_type": args.cfg_type,
         "add_noise": bool(args.add_noise), "latent_feedback": args.latent_feedback}
    finals: list[np.ndarray] = []
    scales = None
    if m.controlnets:
        try:
            given = [float(v) for v in args.controlnet_scales.split(",") if v.strip()] or [1.0]
        except ValueError:
            raise RefError(f"--controlnet-scales {args.controlnet_scales!r}: expected comma-separated numbers")
        if len(given) == 1:
            given = given * m.controlnets
        if len(given) != m.controlnets:
            raise RefError(f"--controlnet-scales: {len(given)} values for {m.controlnets} ControlNets")
        scales = np.asarray(given, dtype=np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dump:
        np.savez(args.out / "common.npz", noise=noise, **{f"cond_{k}": v for k, v in cond.items()},
                 **{f"uncond_{k}": v for k, v in uncond.items()},
                 **{k: np.asarray(v) for k, v in sch.items()})
    k = 0
    while True:
        src = args.inputs / f"frame_{k:03d}.rgb"
        if not src.exists():
            break
        raw = src.read_bytes()
        if len(raw) != W * H * 3:
            raise RefError(f"{src}: {len(raw)} bytes, expected {W}*{H}*3 = {W * H * 3}")
        rgb = np.frombuffer(raw, dtype=np.uint8).reshape(H, W, 3)
        dump: dict = {}
        src = feedback_source(k, len(t_index), args.batch_size)
        z_prev = finals[src] if src is not None else None
        control = None
        if m.controlnets:
            imgs = []
            for c in range(m.controlnets):
                cpath = args.inputs / f"control_{k:03d}_{c}.rgb"
                crgb = rgb
                if cpath.exists():
                    craw = cpath.read_bytes()
                    if len(craw) != W * H * 3:
                        raise RefError(f"{cpath}: {len(craw)} bytes, expected {W * H * 3}")
                    crgb = np.frombuffer(craw, dtype=np.uint8).reshape(H, W, 3)
                imgs.append((crgb.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[None])
            control = {"images": np.ascontiguousarray(np.stack(imgs)), "scales": scales}
        out = process_frame(m, rgb, p, sch, noise, cond, uncond, dump, z_prev, control)
        finals.append(dump["x0_final"])
        out.astype("<f4").tofile(args.out / f"frame_{k:03d}.f32")
        if args.dump:
            np.savez(args.out / f"frame_{k:03d}.npz", **dump)
        if args.png:
            from PIL import Image
            img = np.round(out.transpose(1, 2, 0) * 255.0).astype(np.uint8)
            Image.fromarray(img).save(args.out / f"frame_{k:03d}.png")
        k += 1
    if k == 0:
        raise RefError(f"{args.inputs}: no frame_000.rgb")
    return k


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        n = run(args)
    except RefError as e:
        print(f"reference_stream: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime / transformers failures
        print(f"reference_stream: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"reference_stream: wrote {n} frame(s) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
