#!/usr/bin/env python3
"""Export a diffusers model with an IP-Adapter to the i2i model folder layout (docs/models.md, "IP-Adapter
models"): the UNet takes the image tokens after the text tokens and one scale per IP-Adapter layer, and the image
side (CLIP vision encoder, projection) comes as ONNX graphs beside it.

    python scripts/export_ipadapter.py --base BASE --ip-adapter FILE --image-encoder DIR --out OUT \
        [--base-onnx DIR] [--opset 17]

BASE: the diffusers model folder (unet/, text_encoder/, vae/, ..., as save_pretrained writes it or as downloaded
from Hugging Face, e.g. stabilityai/sd-turbo). FILE: an IP-Adapter checkpoint as h94/IP-Adapter ships them and
diffusers' load_ip_adapter reads them (`.bin` or `.safetensors` with `image_proj` and `ip_adapter` parts), e.g.
models/ip-adapter_sd15.safetensors, models/ip-adapter-plus_sd15.safetensors, sdxl_models/ip-adapter_sdxl.safetensors.
DIR: its CLIPVisionModelWithProjection folder (h94/IP-Adapter models/image_encoder = ViT-H for SD 1.5 and the
SDXL "vit-h" adapters; sdxl_models/image_encoder = ViT-bigG for ip-adapter_sdxl). --base-onnx: an optimum export
of BASE to take text encoders, VAE, tokenizers and scheduler from (default: run `optimum-cli export onnx` now).

OUT gets the base folder with unet/ replaced and image_encoder/, image_proj/, feature_extractor/ added:
    unet/model.onnx           sample, timestep [B], encoder_hidden_states [B, 77 + N, D], ipadapter_scale [L]
                              (SDXL: text_embeds, time_ids) -> latent
    image_encoder/model.onnx  pixel_values [B, 3, S, S] -> image_embeds [B, P], hidden_states [B, T, H]
    image_proj/model.onnx     image_embeds [B, P] (IP-Adapter) | hidden_states [B, T, H] (Plus)
                              -> image_prompt_embeds [B, N, D]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unet_export as ux  # noqa: E402
from unet_export import ExportError, log  # noqa: E402


def load_checkpoint(path: Path) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .bin or .safetensors IP-Adapter file."""
    import torch

    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        sd: dict = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            part, _, rest = k.partition(".")
            if part in sd:
                sd[part][rest] = v
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not sd.get("image_proj") or not sd.get("ip_adapter"):
        raise ExportError(f"{path}: not an IP-Adapter checkpoint (expected image_proj and ip_adapter weights)")
    if any("lora" in k for k in sd["ip_adapter"]):
        raise ExportError(f"{path}: an IP-Adapter FaceID checkpoint (with LoRA weights): not supported")
    return sd


def make_processor_class():
    import torch
    import torch.nn.functional as F

    class LayoutIPAttnProcessor(torch.nn.Module):
        """Cross-attention with the IP-Adapter branch as StreamDiffusion's TRTIPAttnProcessor2_0 computes it: the
        last `tokens` rows of encoder_hidden_states are the image's; their attention output, times this layer's
        entry of `ipadapter_scale`, is added to the text attention's output before to_out."""

        def __init__(self, to_k_ip, to_v_ip, tokens: int, index: int):
            super().__init__()
            self.to_k_ip = to_k_ip
            self.to_v_ip = to_v_ip
            self.tokens = tokens
            self.index = index
            self.scale = None  # a 0-d tensor, set before each forward

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            residual = hidden_states
            if attn.spatial_norm is not None:
                hidden_states = attn.spatial_norm(hidden_states, temb)
            input_ndim = hidden_states.ndim
            if input_ndim == 4:
                batch, channel, height, width = hidden_states.shape
                hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
            end = encoder_hidden_states.shape[1] - self.tokens
            text, image = encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            batch = text.shape[0]
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            query = attn.to_q(hidden_states)
            key, value = attn.to_k(text), attn.to_v(text)
            head_dim = key.shape[-1] // attn.heads

            def heads(t):
                return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

            q = heads(query)
            out = F.scaled_dot_product_attention(q, heads(key), heads(value), attn_mask=attention_mask)
            ip = F.scaled_dot_product_attention(q, heads(self.to_k_ip(image)), heads(self.to_v_ip(image)))
            out = out + self.scale.to(out.dtype) * ip
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            out = attn.to_out[1](attn.to_out[0](out))
            if input_ndim == 4:
                out = out.transpose(-1, -2).reshape(batch, channel, height, width)
            if attn.residual_connection:
                out = out + residual
            return out / attn.rescale_output_factor

    return LayoutIPAttnProcessor


def install(unet, checkpoint: dict):
    """Loads the IP-Adapter with diffusers, takes its projection out of the UNet and puts the layout's processors
    in; returns (projection, processors in layer order, tokens N)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    try:
        unet._load_ip_adapter_weights([checkpoint], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ExportError(f"the IP-Adapter does not fit this UNet ({type(e).__name__}: {str(e)[:400]})")
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    if not isinstance(proj, (ImageProjection, IPAdapterPlusImageProjection)):
        raise ExportError(f"{type(proj).__name__}: only IP-Adapter (ImageProjection) and IP-Adapter Plus "
                          "(IPAdapterPlusImageProjection) checkpoints are supported")
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None
    cls = make_processor_class()
    procs, layers = {}, []
    for name, p in unet.attn_processors.items():
        if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
            q = cls(p.to_k_ip[0], p.to_v_ip[0], p.num_tokens[0], len(layers))
            layers.append(q)
            procs[name] = q
        else:
            procs[name] = p
    unet.set_attn_processor(procs)
    return proj, layers, layers[0].tokens


class IPAdapter:
    """An IP-Adapter installed in a UNet in the layout's form, with its image side, ready to export."""

    def __init__(self, unet, checkpoint_path: Path, encoder_dir: Path):
        import torch
        from diffusers.models.embeddings import ImageProjection
        from transformers import CLIPVisionModelWithProjection

        checkpoint = load_checkpoint(checkpoint_path)
        self.proj, self.layers, self.tokens = install(unet, checkpoint)
        self.encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir),
                                                                     torch_dtype=torch.float32).eval()
        ecfg = self.encoder.config
        self.plus = not isinstance(self.proj, ImageProjection)
        if self.plus and self.proj.proj_in.in_features != ecfg.hidden_size:
            raise ExportError(f"{checkpoint_path}: the projection reads hidden states of width "
                              f"{self.proj.proj_in.in_features}, {encoder_dir} gives {ecfg.hidden_size}: not its "
                              "encoder")
        if not self.plus and self.proj.image_embeds.in_features != ecfg.projection_dim:
            raise ExportError(f"{checkpoint_path}: the projection reads image embeddings of width "
                              f"{self.proj.image_embeds.in_features}, {encoder_dir} gives {ecfg.projection_dim}: not "
                              "its encoder (ip-adapter_sdxl needs sdxl_models/image_encoder, the SD 1.5 and 'vit-h' "
                              "ones models/image_encoder)")
        self.cross_dim = unet.config.cross_attention_dim
        log(f"IP-Adapter{' Plus' if self.plus else ''}: {self.tokens} image tokens, {len(self.layers)} IP layers, "
            f"D = {self.cross_dim}")

    def unet_extras(self) -> dict:
        """The UNet's extra input (name -> tracing tensor, dynamic axes): one scale per IP layer, fixed length."""
        import torch

        return {"ipadapter_scale": (torch.linspace(0.5, 1.0, len(self.layers)), None)}

    def bind(self, extras: dict) -> None:
        for layer in self.layers:
            layer.scale = extras["ipadapter_scale"][layer.index]

    def write_image_side(self, out: Path, opset: int) -> None:
        """image_encoder/, image_proj/, feature_extractor/ and the model_index.json entries."""
        import torch
        from transformers import CLIPImageProcessor

        encoder = self.encoder
        ecfg = encoder.config

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = encoder

            def forward(self, pixel_values):
                res = self.enc(pixel_values=pixel_values, output_hidden_states=True)
                return res.image_embeds, res.hidden_states[-2]

        S = ecfg.image_size
        ux.export_module(Encoder(), (torch.randn(2, 3, S, S),), out / "image_encoder" / "model.onnx",
                         ["pixel_values"], ["image_embeds", "hidden_states"],
                         {"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"},
                          "hidden_states": {0: "batch_size"}}, opset)
        ecfg.save_pretrained(str(out / "image_encoder"))
        if self.plus:
            sample = torch.randn(2, (S // ecfg.patch_size) ** 2 + 1, ecfg.hidden_size)
            in_name = "hidden_states"
        else:
            sample = torch.randn(2, ecfg.projection_dim)
            in_name = "image_embeds"
        ux.export_module(self.proj, (sample,), out / "image_proj" / "model.onnx", [in_name], ["image_prompt_embeds"],
                         {in_name: {0: "batch_size"}, "image_prompt_embeds": {0: "batch_size"}}, opset)
        pcfg = {"_class_name": type(self.proj).__name__, "num_image_text_embeds": self.tokens,
                "cross_attention_dim": self.cross_dim, "num_ip_layers": len(self.layers)}
        if self.plus:
            pcfg.update({"embed_dims": ecfg.hidden_size, "hidden_dims": self.proj.latents.shape[2],
                         "output_dims": self.proj.proj_out.out_features, "depth": len(self.proj.layers),
                         "heads": self.proj.layers[0].attn.heads, "num_queries": self.tokens})
        else:
            pcfg["image_embed_dim"] = ecfg.projection_dim
        (out / "image_proj" / "config.json").write_text(json.dumps(pcfg, indent=2, sort_keys=True) + "\n")
        CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S}).save_pretrained(
            str(out / "feature_extractor"))
        ux.set_model_index(out, image_encoder=["transformers", "CLIPVisionModelWithProjection"],
                           feature_extractor=["transformers", "CLIPImageProcessor"])


ENCODER = "the IP-Adapter's CLIP image encoder folder, e.g. h94/IP-Adapter models/image_encoder"


def export(args) -> None:
    ux.check_paths(args.base, args.out, [args.ip_adapter], [(args.image_encoder, ENCODER)])
    unet = ux.load_unet(args.base)
    ip = IPAdapter(unet, args.ip_adapter, args.image_encoder)
    ux.base_folder(args.base, args.base_onnx, args.out)
    ux.export_unet(unet, args.out / "unet" / "model.onnx", 77 + ip.tokens, ip.unet_extras(), ip.bind, args.opset)
    ip.write_image_side(args.out, args.opset)
    log(f"wrote {args.out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the diffusers model folder")
    ap.add_argument("--ip-adapter", type=Path, required=True, help="the IP-Adapter checkpoint (.bin, .safetensors)")
    ap.add_argument("--image-encoder", type=Path, required=True, help="its CLIPVisionModelWithProjection folder")
    ap.add_argument("--out", type=Path, required=True, help="the model folder to write (new or empty)")
    ap.add_argument("--base-onnx", type=Path, default=None,
                    help="an optimum export of BASE (default: export it now with optimum-cli)")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    return ux.run_main(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
