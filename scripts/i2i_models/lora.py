"""The tiny LoRA model: a tiny SD model folder whose UNet takes LoRA A/B inputs on every attention projection,
and LoRA styles in ONNX Runtime's adapter format in its loras/ folder (docs/models.md, "LoRA models").

    loras/style-a.onnx_adapter       rank 2 on all 16 projections
    loras/style-b.onnx_adapter       rank 3 on the 8 cross-attention (attn2) projections only
    loras/wrong-name.onnx_adapter    style-a with one parameter named after a projection the UNet lacks
    loras/wrong-shape.onnx_adapter   style-a with one lora_A one row too long
    loras/wrong-dtype.onnx_adapter   style-a in float16 (the UNet takes float32)

Each file holds, per projection P it changes, `P.lora_A.weight` [in, r] and `P.lora_B.weight` [r, out] with the
LoRA's alpha / r already in B, so that scale s changes the projection's weight W [in, out] to W + s * A B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import attnunet, tiny
from .graph import save

NAME = "tiny-lora"
SEED = 65
ADAPTERS = ["style-a", "style-b", "wrong-name", "wrong-shape", "wrong-dtype"]


@dataclass(frozen=True)
class Variant:
    name: str = NAME
    seed: int = SEED

    def unet_spec(self, deltas: dict | None = None) -> attnunet.Spec:
        return attnunet.Spec(seed=self.seed, cross_dim=tiny.E_TINY, lora=deltas is None, timestep="int64[B]",
                             out_name="out_sample", deltas=deltas or {})

    def base_tiny(self) -> tiny.Variant:
        return tiny.Variant(self.name, seed=self.seed)


VARIANT = Variant()


def expected_files() -> list[str]:
    return [f"loras/{a}.onnx_adapter" for a in ADAPTERS]


def style_parameters(which: str) -> dict[str, np.ndarray]:
    """The A / B matrices of style-a or style-b (float32), keyed by input name."""
    rank, part = {"style-a": (2, 1), "style-b": (3, 2)}[which]
    rng = np.random.default_rng([SEED, 30 + part])
    params = {}
    for name, (n_in, n_out) in attnunet.lora_modules(VARIANT.unet_spec()).items():
        if which == "style-b" and ".attn2." not in name:
            continue
        params[f"{name}.lora_A.weight"] = (rng.standard_normal((n_in, rank)) / np.sqrt(n_in)).astype(np.float32)
        params[f"{name}.lora_B.weight"] = (rng.standard_normal((rank, n_out)) * 0.6).astype(np.float32)
    return params


def adapter_parameters(which: str) -> dict[str, np.ndarray]:
    if which in ("style-a", "style-b"):
        return style_parameters(which)
    params = style_parameters("style-a")
    first_a = next(iter(params))
    if which == "wrong-name":
        return {k.replace(".attn1.to_v.", ".attn3.to_v."): v for k, v in params.items()}
    if which == "wrong-shape":
        params[first_a] = np.concatenate([params[first_a], params[first_a][:1]], axis=0)
        return params
    if which == "wrong-dtype":
        return {k: v.astype(np.float16) for k, v in params.items()}
    raise ValueError(which)


def write_adapter(path: Path, params: dict[str, np.ndarray], adapter_version: int = 1, model_version: int = 1):
    """An .onnx_adapter file, written by ONNX Runtime's own writer."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(model_version)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    fmt.export_adapter(str(path))


def write(dest: Path, v: Variant = VARIANT) -> None:
    """Turns the base model folder in `dest` (written by make_models) into the LoRA layout."""
    save(attnunet.unet(v.unet_spec()).model(f"{v.name}: random weights, for tests (unet with LoRA inputs)"),
         dest / "unet" / "model.onnx")
    (dest / "loras").mkdir(parents=True, exist_ok=True)
    for a in ADAPTERS:
        write_adapter(dest / "loras" / f"{a}.onnx_adapter", adapter_parameters(a))
