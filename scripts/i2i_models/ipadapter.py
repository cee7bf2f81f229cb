"""Tiny IP-Adapter models: a tiny SD / SDXL model folder whose UNet takes image tokens, plus image_encoder/,
image_proj/ and feature_extractor/ (docs/models.md, "IP-Adapter models").

    tiny-ipadapter        SD 1.x style, D = 32, N = 4 tokens (ImageProjection), L = 2 IP layers
    tiny-ipadapter-plus   SD 1.x style, D = 32, N = 16 tokens (the Plus resampler on the penultimate layer)
    tiny-sdxl-ipadapter   SDXL style, D = 24 + 32, N = 4, L = 3, a wider ("bigG") image encoder

The UNet follows the layout of the livepeer StreamDiffusion TensorRT export: `sample`, `timestep` float32 [B],
`encoder_hidden_states` [B, 77 + N, D], `ipadapter_scale` [L] (SDXL adds `text_embeds`, `time_ids`) -> `latent`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import attnunet, clipvision, configs, sdxl, tiny
from .graph import save


@dataclass(frozen=True)
class Variant:
    name: str
    seed: int
    tokens: int
    plus: bool = False
    xl: bool = False

    @property
    def cross_dim(self) -> int:
        return sdxl.E1 + sdxl.E2 if self.xl else tiny.E_TINY

    @property
    def layers(self) -> int:
        return 3 if self.xl else 2

    def unet_spec(self) -> attnunet.Spec:
        return attnunet.Spec(seed=self.seed, cross_dim=self.cross_dim, blocks=self.layers, ip_tokens=self.tokens,
                             xl_pooled=sdxl.POOLED if self.xl else 0)

    def vision(self) -> clipvision.Vision:
        if self.xl:  # stands in for OpenCLIP ViT-bigG (ip-adapter_sdxl); SD's for ViT-H
            return clipvision.Vision(seed=self.seed, hidden=20, projection=16)
        return clipvision.Vision(seed=self.seed)

    def projection(self) -> clipvision.Projection:
        return clipvision.Projection(seed=self.seed, tokens=self.tokens, cross_dim=self.cross_dim, plus=self.plus)

    def base_tiny(self) -> tiny.Variant:
        return tiny.Variant(self.name, timestep="float32[B]", unet_out="latent", seed=self.seed)

    def base_sdxl(self) -> sdxl.Variant:
        return sdxl.Variant(self.name, seed=self.seed)


VARIANTS = [
    Variant("tiny-ipadapter", seed=61, tokens=4),
    Variant("tiny-ipadapter-plus", seed=62, tokens=16, plus=True),
    Variant("tiny-sdxl-ipadapter", seed=63, tokens=4, xl=True),
]

EXTRA_FILES = ["image_encoder/model.onnx", "image_encoder/config.json", "image_proj/model.onnx",
               "image_proj/config.json", "feature_extractor/preprocessor_config.json"]


def write(dest: Path, v: Variant) -> None:
    """Turns the base model folder in `dest` (written by make_models) into the IP-Adapter layout."""
    doc = f"{v.name}: random weights, for tests"
    save(attnunet.unet(v.unet_spec()).model(f"{doc} (unet with IP-Adapter inputs)"), dest / "unet" / "model.onnx")
    vis, proj = v.vision(), v.projection()
    for comp, text in (("image_encoder", clipvision.encoder_config(vis)),
                       ("image_proj", clipvision.proj_config(proj, vis, v.layers)),
                       ("feature_extractor", None)):
        (dest / comp).mkdir(parents=True, exist_ok=True)
        if text is not None:
            (dest / comp / "config.json").write_text(text)
    save(clipvision.image_encoder(vis).model(f"{doc} (image_encoder)"), dest / "image_encoder" / "model.onnx")
    save(clipvision.image_proj(proj, vis).model(f"{doc} (image_proj)"), dest / "image_proj" / "model.onnx")
    (dest / "feature_extractor" / "preprocessor_config.json").write_text(clipvision.preprocessor_config(vis))
    index = json.loads((dest / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (dest / "model_index.json").write_text(configs.dump(index))
