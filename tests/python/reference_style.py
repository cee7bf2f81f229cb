"""Reference math for styles (numpy + onnxruntime): IP-Adapter image tokens, LoRA adapters bound as UNet inputs,
and A1111-style prompt weighting. reference_stream.py uses it; the engine must match it to 1e-4.

IP-Adapter (docs/models.md, "IP-Adapter models"):
- the picture is preprocessed as transformers' CLIPImageProcessor does (feature_extractor/preprocessor_config.json:
  shortest edge resized to S with bicubic resampling, centre crop S x S, times 1/255, minus mean, over std), run
  through image_encoder/ and image_proj/ (whose single input names the encoder output it takes) -> tokens [1, N, D];
- the negative tokens (the guidance rows of cfg full / initialize) are image_proj of zeros: for an `image_embeds`
  input zeros of its shape, for a `hidden_states` input the encoder's output for all-zero `pixel_values`
  (diffusers' StableDiffusionPipeline.encode_image);
- without a picture both are zero tokens, which contribute exactly nothing (the IP keys and values have no bias);
- `encoder_hidden_states` = [text rows (77), image tokens (N)]; `ipadapter_scale` [L] = one scale per IP layer.

LoRA (docs/models.md, "LoRA models"): for each projection P of the UNet with inputs `P.lora_A.weight` [in, r]
and `P.lora_B.weight` [r, out], the active adapters (file, scale) are bound side by side along r:
A = [A_1 | A_2 | ...], B = [s_1 B_1 ; s_2 B_2 ; ...], so the projection computes x (W + sum_i s_i A_i B_i) + b.
An adapter that does not change P contributes zero blocks of its rank r_i (the largest rank in its file); with
no adapter, A and B are zeros of rank 1. A change of LoRAs fades by binding both lists side by side
(`fade_active`).

Prompt weighting (A1111's parse_prompt_attention and its "Original" emphasis): `(text)` x 1.1, `[text]` / 1.1,
`(text:1.3)` x 1.3, nested brackets multiply, `\\(` `\\)` `\\[` `\\]` `\\\\` are the literal characters; a bracket
without its partner stays literal text (A1111 instead applies an unclosed one to the rest). Each run of equal
weight is tokenized on its own (no start / end tokens), the runs are joined, cut to 75 tokens and framed as the
tokenizer frames a prompt ([start] tokens [end] [pad]...); start, end and pad tokens weigh 1. The encoder's
output z [77, E] becomes z' = z * w (per token row), then z'' = z' * (mean(z) / mean(z')), the means over all
77 x E values in float64, the ratio applied in float32. All weights 1 leaves z untouched. SDXL weights each
encoder's hidden states on its own; the pooled vector stays unweighted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import onnx_adapter


class StyleError(Exception):
    pass


# ---------------------------------------------------------------- prompt weighting

_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

ROUND = 1.1
SQUARE = 1 / 1.1


def parse_weights(text: str) -> list[tuple[str, float]]:
    """The prompt as runs of text with their weights (A1111's parser; unbalanced brackets stay literal)."""
    res: list[list] = []  # [text, weight]; an open bracket is a literal entry until its partner comes
    rounds: list[int] = []
    squares: list[int] = []

    def close(stack: list[int], factor: float):
        start = stack.pop()
        res[start][0] = ""
        for entry in res[start + 1:]:
            entry[1] *= factor

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if len(tok) == 2 and tok[0] == "\\":
            res.append([tok[1], 1.0])
        elif tok == "(":
            rounds.append(len(res))
            res.append(["(", 1.0])
        elif tok == "[":
            squares.append(len(res))
            res.append(["[", 1.0])
        elif weight is not None and rounds and _is_number(weight):
            close(rounds, float(weight))
        elif tok == ")" and rounds:
            close(rounds, ROUND)
        elif tok == "]" and squares:
            close(squares, SQUARE)
        else:
            res.append([tok, 1.0])
    runs: list[tuple[str, float]] = []
    for t, w in res:
        if not t:
            continue
        if runs and runs[-1][1] == w:
            runs[-1] = (runs[-1][0] + t, w)
        else:
            runs.append((t, w))
    return runs or [("", 1.0)]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def plain_text(text: str) -> str:
    """The prompt without its weighting syntax."""
    return "".join(t for t, _ in parse_weights(text))


def weighted_tokens(tokenizer, text: str, length: int = 77) -> tuple[np.ndarray, np.ndarray]:
    """ids [length] int64 and weights [length] float32 of a prompt (transformers CLIPTokenizer)."""
    ids: list[int] = []
    weights: list[float] = []
    for run, w in parse_weights(text):
        toks = tokenizer(run, add_special_tokens=False, truncation=False)["input_ids"]
        ids += toks
        weights += [w] * len(toks)
    ids, weights = ids[:length - 2], weights[:length - 2]
    pad = length - 2 - len(ids)
    ids = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    weights = [1.0] + weights + [1.0] + [1.0] * pad
    return np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float32)


def apply_weights(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """z [1, T, E] float32 -> z * w per token row, its mean restored (A1111's "Original" emphasis)."""
    if np.all(weights == 1.0):
        return z
    zw = (z * weights.astype(np.float32)[None, :, None]).astype(np.float32)
    after = float(zw.mean(dtype=np.float64))
    if after == 0.0:
        return zw
    ratio = np.float32(float(z.mean(dtype=np.float64)) / after)
    return (zw * ratio).astype(np.float32)


# ---------------------------------------------------------------- IP-Adapter

def read_json(path: Path, error=StyleError) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: missing")
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})")


def session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _size(v, key: str) -> int:
    return int(v[key] if isinstance(v, dict) else v)


def preprocess(rgb: np.ndarray, cfg: dict) -> np.ndarray:
    """[H, W, 3] uint8 -> pixel_values [1, 3, S, S] float32, as transformers' CLIPImageProcessor."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if cfg.get("do_resize", True):
        size = cfg.get("size", {"shortest_edge": 224})
        short_edge = _size(size, "shortest_edge") if isinstance(size, dict) and "shortest_edge" in size else \
            _size(size, "height")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = short_edge, int(short_edge * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=int(cfg.get("resample", 3)))
    x = np.asarray(img)
    if cfg.get("do_center_crop", True):
        crop = cfg.get("crop_size", {"height": 224, "width": 224})
        ch, cw = _size(crop, "height"), _size(crop, "width")
        top, left = (x.shape[0] - ch) // 2, (x.shape[1] - cw) // 2
        if top < 0 or left < 0:
            raise StyleError(f"picture {x.shape[1]}x{x.shape[0]} is smaller than the crop {cw}x{ch}")
        x = x[top:top + ch, left:left + cw]
    x = (x.astype(np.float64) * float(cfg.get("rescale_factor", 1 / 255))).astype(np.float32)
    if cfg.get("do_normalize", True):
        mean = np.asarray(cfg["image_mean"], dtype=np.float32)
        std = np.asarray(cfg["image_std"], dtype=np.float32)
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


class ImageSide:
    """image_encoder/ + image_proj/ + feature_extractor/ of an IP-Adapter model folder."""

    def __init__(self, root: Path, threads: int = 1):
        self.root = root
        self.cfg = read_json(root / "feature_extractor" / "preprocessor_config.json")
        self.encoder = session(root / "image_encoder" / "model.onnx", threads)
        self.proj = session(root / "image_proj" / "model.onnx", threads)
        ins = self.proj.get_inputs()
        outs = [o.name for o in self.encoder.get_outputs()]
        if len(ins) != 1 or ins[0].name not in outs:
            raise StyleError(f"{root / 'image_proj' / 'model.onnx'}: expected one input named after an "
                             f"image_encoder output ({outs}), found {[i.name for i in ins]}")
        self.proj_input = ins[0].name
        shape = self.encoder.get_inputs()[0].shape
        self.size = int(shape[2])

    def tokens_for_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        feat = self.encoder.run([self.proj_input], {"pixel_values": pixel_values})[0]
        return self.proj.run(None, {self.proj_input: feat})[0].astype(np.float32)

    def tokens(self, rgb: np.ndarray) -> np.ndarray:
        """The image tokens [1, N, D] of a picture [H, W, 3] uint8."""
        return self.tokens_for_pixels(preprocess(rgb, self.cfg))

    def negative_tokens(self) -> np.ndarray:
        if self.proj_input == "image_embeds":
            shape = [1] + [int(d) for d in self.proj.get_inputs()[0].shape[1:]]
            return self.proj.run(None, {"image_embeds": np.zeros(shape, np.float32)})[0].astype(np.float32)
        return self.tokens_for_pixels(np.zeros((1, 3, self.size, self.size), np.float32))


def scale_vector(scale, layers: int) -> np.ndarray:
    """`ipadapter_scale` [L] from one value or one per layer."""
    vals = [float(s) for s in (scale if isinstance(scale, (list, tuple)) else [scale])]
    if len(vals) == 1:
        vals = vals * layers
    if len(vals) != layers:
        raise StyleError(f"ip-adapter-scale: {len(vals)} values for a UNet with {layers} IP-Adapter layers "
                         f"(give one value or {layers})")
    return np.asarray(vals, dtype=np.float32)


def append_tokens(cond: dict, tokens: np.ndarray) -> dict:
    """The UNet conditioning with image tokens [1, N, D] after the text rows."""
    ehs = cond["encoder_hidden_states"]
    return {**cond, "encoder_hidden_states": np.concatenate([ehs, tokens.astype(ehs.dtype)], axis=1)}


# ---------------------------------------------------------------- LoRA

ORT_DTYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(double)": 11}


def lora_slots(inputs) -> dict[str, dict]:
    """The UNet's LoRA slots from its inputs (onnxruntime NodeArg list): module -> {in, out, elem}."""
    by_name = {i.name: i for i in inputs}
    slots = {}
    for name, arg in by_name.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[:-len(".lora_A.weight")]
        b = by_name.get(f"{module}.lora_B.weight")
        if b is None:
            raise StyleError(f"UNet input {name} has no {module}.lora_B.weight beside it")
        if len(arg.shape) != 2 or len(b.shape) != 2 or not isinstance(arg.shape[0], int) \
                or not isinstance(b.shape[1], int):
            raise StyleError(f"UNet inputs {name} {arg.shape} / lora_B {b.shape}: expected [in, r] and [r, out] "
                             "with fixed in and out")
        slots[module] = {"in": arg.shape[0], "out": b.shape[1], "elem": ORT_DTYPES.get(arg.type, 0)}
    return slots


def check_adapter(adapter: onnx_adapter.Adapter, slots: dict, where: str) -> int:
    """Refuses an adapter that does not fit the UNet (the first mismatch named); returns its rank."""
    rank = 0
    for name, arr in adapter.parameters.items():
        for suffix, axis_io, axis_r in ((".lora_A.weight", 0, 1), (".lora_B.weight", 1, 0)):
            if name.endswith(suffix):
                module = name[:-len(suffix)]
                break
        else:
            raise StyleError(f"{where}: parameter {name} is not a LoRA matrix (expected NAME.lora_A.weight or "
                             "NAME.lora_B.weight)")
        slot = slots.get(module)
        if slot is None:
            raise StyleError(f"{where}: parameter {name}: the UNet has no input of that name")
        want = slot["in"] if suffix == ".lora_A.weight" else slot["out"]
        if arr.ndim != 2 or arr.shape[axis_io] != want:
            expect = f"[{want}, r]" if suffix == ".lora_A.weight" else f"[r, {want}]"
            raise StyleError(f"{where}: parameter {name}: shape {list(arr.shape)}, the UNet takes {expect}")
        dt = adapter.data_types[name]
        if dt != slot["elem"]:
            raise StyleError(f"{where}: parameter {name}: {onnx_adapter.DTYPE_NAMES.get(dt, dt)}, the UNet takes "
                             f"{onnx_adapter.DTYPE_NAMES.get(slot['elem'], slot['elem'])}")
        other = f"{module}.lora_B.weight" if suffix == ".lora_A.weight" else f"{module}.lora_A.weight"
        if other not in adapter.parameters:
            raise StyleError(f"{where}: parameter {name} has no {other} beside it")
        r = arr.shape[axis_r]
        if suffix == ".lora_A.weight" and adapter.parameters[other].shape[0] != r:
            raise StyleError(f"{where}: {name} has rank {r}, {other} {adapter.parameters[other].shape[0]}")
        rank = max(rank, r)
    if rank == 0:
        raise StyleError(f"{where}: no LoRA parameters")
    return rank


def lora_feeds(slots: dict, active: list[tuple[onnx_adapter.Adapter, float]]) -> dict[str, np.ndarray]:
    """The UNet's LoRA inputs for the active (adapter, scale) list (already checked with check_adapter)."""
    feeds = {}
    ranks = [max(a.parameters[k].shape[1] for k in a.parameters if k.endswith(".lora_A.weight"))
             for a, _ in active]
    for module, slot in slots.items():
        dtype = np.float16 if slot["elem"] == 10 else np.float32
        a_parts, b_parts = [], []
        for (adapter, scale), r in zip(active, ranks):
            a = adapter.parameters.get(f"{module}.lora_A.weight")
            b = adapter.parameters.get(f"{module}.lora_B.weight")
            pa = np.zeros((slot["in"], r), dtype)
            pb = np.zeros((r, slot["out"]), dtype)
            if a is not None:
                pa[:, :a.shape[1]] = a
                pb[:b.shape[0]] = (b.astype(np.float32) * np.float32(scale)).astype(dtype)
            a_parts.append(pa)
            b_parts.append(pb)
        if not a_parts:
            a_parts, b_parts = [np.zeros((slot["in"], 1), dtype)], [np.zeros((1, slot["out"]), dtype)]
        feeds[f"{module}.lora_A.weight"] = np.concatenate(a_parts, axis=1)
        feeds[f"{module}.lora_B.weight"] = np.concatenate(b_parts, axis=0)
    return feeds


def fade_active(old: list, new: list, t: float) -> list:
    """The (adapter, scale) list bound at fade position t of a LoRA change (`transition-frames`): the old LoRAs at
    (1 - t) times their scales beside the new ones at t times theirs, so the weights move linearly from
    W + sum s_old A B to W + sum s_new A B; t >= 1 is the new list itself, t <= 0 the old one."""
    if t >= 1.0:
        return list(new)
    if t <= 0.0:
        return list(old)
    return [(a, (1.0 - t) * s) for a, s in old] + [(a, t * s) for a, s in new]


def parse_lora_list(text: str) -> list[tuple[str, float]]:
    """`FILE[:SCALE][,FILE[:SCALE]...]` -> [(file, scale)] (scale 1 when absent)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        path, _, tail = item.rpartition(":")
        if path and _is_number(tail):
            out.append((path, float(tail)))
        else:
            out.append((item, 1.0))
    return out
