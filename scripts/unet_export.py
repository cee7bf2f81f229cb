"""What export_ipadapter.py and export_lora.py share: loading a diffusers UNet, the model folder around the new
UNet (an optimum export of the base model), and the UNet's ONNX export with extra inputs.

The exported UNet has the signature of the livepeer StreamDiffusion TensorRT export: `sample` [B, 4, h, w],
`timestep` float32 [B], `encoder_hidden_states` [B, S, D] (SDXL: `text_embeds` [B, P], `time_ids` [B, 6]), then
the extra inputs (`ipadapter_scale`, LoRA matrices), output `latent`. Needs torch, diffusers, transformers and,
for the base folder, optimum (`pip install "optimum[onnx]" diffusers transformers torch`; LoRA: also `peft`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TWO_GB = 2 ** 31 - 1


class ExportError(Exception):
    """A problem with the inputs, for people (no traceback)."""


def log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def check_paths(base: Path, out: Path, files=(), folders=()) -> None:
    """Refuses missing inputs and an output folder in use before anything slow runs."""
    if not (base / "unet" / "config.json").is_file():
        raise ExportError(f"{base}: no unet/config.json (expected a diffusers model folder, as save_pretrained "
                          "writes it or as downloaded from Hugging Face)")
    for f in files:
        if not Path(f).is_file():
            raise ExportError(f"{f}: no such file")
    for d, what in folders:
        if not (Path(d) / "config.json").is_file():
            raise ExportError(f"{d}: no config.json (expected {what})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder (give a new one)")


def load_unet(base: Path):
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", torch_dtype=torch.float32)
    return unet.eval()


def is_sdxl(unet) -> bool:
    return unet.config.addition_embed_type == "text_time"


def base_folder(base: Path, base_onnx: Path | None, out: Path) -> None:
    """Everything of the model folder but the UNet: copied from `base_onnx` (an optimum export of the base model)
    or exported now with `optimum-cli export onnx` (which also exports a plain UNet, then replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="i2i-export-") as tmp:
        src = base_onnx
        if src is None:
            src = Path(tmp) / "optimum"
            cli = Path(sys.executable).parent / "optimum-cli"
            cmd = [str(cli) if cli.exists() else "optimum-cli", "export", "onnx", "--model", str(base), "--task",
                   "text-to-image", str(src)]
            log("exporting the base model with " + " ".join(cmd[1:]))
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise ExportError(f"optimum-cli export failed:\n{res.stderr[-3000:]}")
        if not (src / "text_encoder" / "model.onnx").is_file():
            raise ExportError(f"{src}: no text_encoder/model.onnx (expected an optimum export of the base model)")
        for item in src.iterdir():
            if item.name == "unet":
                continue
            dest = out / item.name
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, dest)
    (out / "unet").mkdir()
    (out / "unet" / "config.json").write_text((base / "unet" / "config.json").read_text())


def set_model_index(out: Path, **entries) -> None:
    path = out / "model_index.json"
    index = json.loads(path.read_text()) if path.is_file() else {}
    index.update(entries)
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def dummy_inputs(unet, seq: int, batch: int = 2, size: int = 8):
    """sample, timestep, encoder_hidden_states (and SDXL's text_embeds, time_ids) for tracing."""
    import torch

    g = torch.Generator().manual_seed(0)
    d = unet.config.cross_attention_dim
    ins = {
        "sample": torch.randn(batch, unet.config.in_channels, size, size, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, seq, d, generator=g),
    }
    if is_sdxl(unet):
        n_ids = 6
        pooled = unet.config.projection_class_embeddings_input_dim - n_ids * unet.config.addition_time_embed_dim
        ins["text_embeds"] = torch.randn(batch, pooled, generator=g)
        ins["time_ids"] = torch.tensor([[8.0 * size, 8.0 * size, 0, 0, 8.0 * size, 8.0 * size]] * batch)
    return ins


def export_unet(unet, out_file: Path, seq: int, extras: dict, bind, opset: int = 17,
                fixed_seq: bool = True) -> list[str]:
    """Exports the UNet. `extras`: name -> (tracing tensor, dynamic axes) of the extra inputs, in order; `bind` is
    called with {name: tensor} of the extras before each forward (it hands them to the modules that use them).
    `fixed_seq`: the sequence length of encoder_hidden_states is `seq` in the graph (IP-Adapter: 77 + N), else
    dynamic. Returns the graph's input names."""
    import onnx
    import torch

    base = dummy_inputs(unet, seq)
    xl = "text_embeds" in base
    names = ["sample", "timestep", "encoder_hidden_states"] + (["text_embeds", "time_ids"] if xl else [])
    extra_names = list(extras)

    class Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, *rest):
            cond = {}
            if xl:
                cond = {"added_cond_kwargs": {"text_embeds": rest[0], "time_ids": rest[1]}}
                rest = rest[2:]
            bind(dict(zip(extra_names, rest)))
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False, **cond)[0]

    args = tuple(base[n] for n in names) + tuple(extras[n][0] for n in extra_names)
    dynamic = {"sample": {0: "batch_size", 2: "height", 3: "width"}, "timestep": {0: "batch_size"},
               "encoder_hidden_states": {0: "batch_size"} if fixed_seq else {0: "batch_size", 1: "sequence_length"},
               "latent": {0: "batch_size", 2: "height", 3: "width"}}
    if xl:
        dynamic.update({"text_embeds": {0: "batch_size"}, "time_ids": {0: "batch_size"}})
    for n in extra_names:
        if extras[n][1]:
            dynamic[n] = extras[n][1]
    with tempfile.TemporaryDirectory(prefix="i2i-unet-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        with torch.inference_mode():
            torch.onnx.export(Wrapper(unet).eval(), args, str(tmp_file), input_names=names + extra_names,
                              output_names=["latent"], dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        model = onnx.load(str(tmp_file), load_external_data=True)
        save_model(model, out_file)
    return [i.name for i in model.graph.input]


def save_model(model, out_file: Path) -> None:
    """One file, or (over 2 GB) the graph plus every weight in model.onnx_data beside it, as optimum writes."""
    import onnx

    out_file.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < TWO_GB:
        onnx.save_model(model, str(out_file))
        return
    onnx.save_model(model, str(out_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_file.name + "_data", size_threshold=1024, convert_attribute=False)


def export_module(module, args: tuple, out_file: Path, input_names, output_names, dynamic, opset: int = 17):
    """A small module (image encoder, projection) to one ONNX file."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory(prefix="i2i-part-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        with torch.inference_mode():
            torch.onnx.export(module.eval(), args, str(tmp_file), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
        save_model(onnx.load(str(tmp_file), load_external_data=True), out_file)


def run_main(main) -> int:
    """Runs `main`, turning ExportError into a message and exit status 1."""
    try:
        main()
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
