#!/usr/bin/env python3
"""Export a diffusers model whose UNet takes LoRA matrices as inputs, and LoRA files as ONNX Runtime adapter files
(docs/models.md, "LoRA models"): styles switch by binding other tensors, without a new session.

    python scripts/export_lora.py --base BASE --lora FILE [--lora FILE ...] --out OUT [--base-onnx DIR]
        [--targets to_q,to_k,to_v,to_out.0] [--skip-unsupported] [--ip-adapter FILE --image-encoder DIR]

BASE: the diffusers model folder. FILE: a LoRA in diffusers' form (save_lora_weights, `unet.<module>.lora_A.weight`)
or kohya's / A1111's (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`), `.safetensors` (or a
diffusers `.bin`), read by diffusers' own loader (so SDXL files in kohya's SGM block names work as in diffusers).

OUT gets the base folder (from --base-onnx, an optimum export of BASE, or exported now with optimum-cli) with:
    unet/model.onnx       sample, timestep [B], encoder_hidden_states [B, S, D] (SDXL: text_embeds, time_ids),
                          and for each LoRA-able projection P (a Linear: [in] -> [out]):
                          P.lora_A.weight [in, lora_r], P.lora_B.weight [lora_r, out]  -> latent
                          P computes x W + b + (x A) B; zero matrices (of any rank) leave the UNet as it was.
    loras/NAME.onnx_adapter  per LoRA FILE (NAME = its file name without extension), written by
                          onnxruntime.AdapterFormat: for each projection the LoRA changes, P.lora_A.weight [in, r]
                          and P.lora_B.weight [r, out] (float32) with the LoRA's scaling (alpha / r) in B, all of one
                          rank r (smaller ones padded with zeros): scale s makes W + s A B.

The projections with inputs: every Linear whose name ends with one of --targets (default the attention
projections to_q, to_k, to_v, to_out.0) plus every Linear a given LoRA changes, so later LoRAs that touch other
layers need a UNet exported with those targets. LoRA on convolutions (LoCon) and DoRA are refused (or, with
--skip-unsupported, left out with a warning); text-encoder parts are left out with a warning. With --ip-adapter
and --image-encoder the UNet also takes image tokens (export_ipadapter.py's layout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unet_export as ux  # noqa: E402
from unet_export import ExportError, log  # noqa: E402

DEFAULT_TARGETS = "to_q,to_k,to_v,to_out.0"


def read_loras(unet, files: list[Path], skip_unsupported: bool) -> dict[str, dict]:
    """{name: {module: (A [in, r], B [r, out] with the scaling in it)}} of each LoRA file, read by diffusers and
    peft exactly as a diffusers pipeline loads it."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer

    pipe_cls = StableDiffusionXLPipeline if ux.is_sdxl(unet) else StableDiffusionPipeline
    out: dict[str, dict] = {}
    for i, path in enumerate(files):
        name = path.stem
        if name in out:
            raise ExportError(f"{path}: a second LoRA named {name} (the adapter files are named after the LoRA files)")
        try:
            sd, alphas = pipe_cls.lora_state_dict(str(path), unet_config=unet.config)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ExportError(f"{path}: not a LoRA diffusers can read ({type(e).__name__}: {str(e)[:300]})")
        others = sorted({k.split(".")[0] for k in sd if not k.startswith("unet.")})
        if others:
            n = sum(1 for k in sd if not k.startswith("unet."))
            log(f"warning: {path}: {n} tensors for {', '.join(others)} left out (LoRAs apply to the UNet only; the "
                "style may differ from the LoRA's in a pipeline that also changes the text encoder)")
        sd = {k: v for k, v in sd.items() if k.startswith("unet.")}
        if not sd:
            raise ExportError(f"{path}: no UNet weights in this LoRA")
        adapter = f"lora{i}"
        try:
            pipe_cls.load_lora_into_unet(sd, alphas, unet, adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ExportError(f"{path}: does not fit this UNet ({type(e).__name__}: {str(e)[:300]})")
        params, unsupported = {}, []
        for module_name, module in unet.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                continue
            base = module.get_base_layer()
            dora = getattr(module, "use_dora", {}).get(adapter, False)
            if not isinstance(base, torch.nn.Linear) or dora:
                unsupported.append(f"{module_name} ({'DoRA' if dora else type(base).__name__})")
                continue
            a = module.lora_A[adapter].weight.detach().float()  # [r, in]
            b = module.lora_B[adapter].weight.detach().float() * float(module.scaling[adapter])  # [out, r]
            params[module_name] = (a.T.contiguous().numpy(), b.T.contiguous().numpy())
        unet.delete_adapters(adapter)
        if unsupported:
            msg = f"{path}: {len(unsupported)} LoRA layers this layout cannot take: {', '.join(unsupported[:4])}" + \
                  (" ..." if len(unsupported) > 4 else "")
            if not skip_unsupported:
                raise ExportError(msg + " (--skip-unsupported leaves them out)")
            log(f"warning: {msg}: left out")
        if not params:
            raise ExportError(f"{path}: no LoRA layer on a Linear projection")
        rank = max(a.shape[1] for a, _ in params.values())
        padded = {}
        for m, (a, b) in params.items():
            pa = np.zeros((a.shape[0], rank), np.float32)
            pb = np.zeros((rank, b.shape[1]), np.float32)
            pa[:, :a.shape[1]], pb[:b.shape[0]] = a, b
            padded[m] = (pa, pb)
        log(f"{path}: rank {rank}, {len(padded)} projections")
        out[name] = padded
    unet.unload_lora()
    return out


def make_slot_class():
    import torch

    class LoraSlot(torch.nn.Module):
        """A Linear plus the LoRA branch whose matrices are graph inputs: x W + b + (x A) B."""

        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = None
            self.b = None

        def forward(self, x):
            return self.base(x) + torch.matmul(torch.matmul(x, self.a), self.b)

    return LoraSlot


def install_slots(unet, targets: list[str], lora_modules: set[str]) -> dict:
    """Replaces the target Linears by LoRA slots; returns {module name: slot} in the UNet's module order."""
    import torch

    wanted = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and
              (n in lora_modules or any(n.endswith("." + t) for t in targets))]
    missing = sorted(lora_modules - set(wanted))
    if missing:
        raise ExportError(f"LoRA layers on modules that are not Linear projections of this UNet: {missing[:4]}")
    slot_cls = make_slot_class()
    slots = {}
    for n in wanted:
        slots[n] = slot_cls(unet.get_submodule(n))
        unet.set_submodule(n, slots[n])
    return slots


def write_adapter(path: Path, params: dict[str, np.ndarray]) -> None:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))


def export(args) -> None:
    import torch

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.lora:
        raise ExportError("no --lora given")
    if (args.ip_adapter is None) != (args.image_encoder is None):
        raise ExportError("--ip-adapter and --image-encoder go together")
    from export_ipadapter import ENCODER

    ux.check_paths(args.base, args.out, args.lora + ([args.ip_adapter] if args.ip_adapter else []),
                   [(args.image_encoder, ENCODER)] if args.image_encoder else [])
    unet = ux.load_unet(args.base)
    loras = read_loras(unet, args.lora, args.skip_unsupported)
    ip = None
    if args.ip_adapter is not None:
        from export_ipadapter import IPAdapter

        ip = IPAdapter(unet, args.ip_adapter, args.image_encoder)
    modules = set().union(*(set(p) for p in loras.values()))
    slots = install_slots(unet, targets, modules)
    log(f"{len(slots)} projections take LoRA inputs")
    ux.base_folder(args.base, args.base_onnx, args.out)
    g = torch.Generator().manual_seed(0)
    extras = dict(ip.unet_extras()) if ip else {}
    for n, slot in slots.items():
        extras[f"{n}.lora_A.weight"] = (torch.randn(slot.base.in_features, 2, generator=g) * 0.01, {1: "lora_r"})
        extras[f"{n}.lora_B.weight"] = (torch.randn(2, slot.base.out_features, generator=g) * 0.01, {0: "lora_r"})

    def bind(values):
        if ip:
            ip.bind(values)
        for n, slot in slots.items():
            slot.a, slot.b = values[f"{n}.lora_A.weight"], values[f"{n}.lora_B.weight"]

    seq = 77 + (ip.tokens if ip else 0)
    names = ux.export_unet(unet, args.out / "unet" / "model.onnx", seq, extras, bind, args.opset,
                           fixed_seq=ip is not None)
    missing = [n for n in extras if n not in names]
    if missing:
        raise ExportError(f"the exported UNet lacks inputs {missing[:4]} (a projection the UNet never calls?)")
    if ip:
        ip.write_image_side(args.out, args.opset)
    for name, params in loras.items():
        flat = {}
        for m, (a, b) in params.items():
            flat[f"{m}.lora_A.weight"], flat[f"{m}.lora_B.weight"] = a, b
        write_adapter(args.out / "loras" / f"{name}.onnx_adapter", flat)
    log(f"wrote {args.out} ({len(loras)} LoRA adapter files in loras/)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the diffusers model folder")
    ap.add_argument("--lora", type=Path, action="append", default=[], help="a LoRA file (repeat for several)")
    ap.add_argument("--out", type=Path, required=True, help="the model folder to write (new or empty)")
    ap.add_argument("--base-onnx", type=Path, default=None,
                    help="an optimum export of BASE (default: export it now with optimum-cli)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"name endings of the Linear layers that get LoRA inputs (default {DEFAULT_TARGETS})")
    ap.add_argument("--skip-unsupported", action="store_true",
                    help="leave out LoRA layers on convolutions and DoRA layers instead of refusing the LoRA")
    ap.add_argument("--ip-adapter", type=Path, default=None, help="also an IP-Adapter (see export_ipadapter.py)")
    ap.add_argument("--image-encoder", type=Path, default=None, help="the IP-Adapter's image encoder folder")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    return ux.run_main(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
