#!/usr/bin/env python3
"""Checks scripts/export_ipadapter.py and scripts/export_lora.py on tiny diffusers-built models with random weights
(needs torch, diffusers, transformers, optimum, peft: the .venv-peer environment; test_style_exports.py runs it).

    .venv-peer/bin/python tests/python/style_export_check.py CASE WORKDIR

CASE: ipadapter-sd, ipadapter-plus-sd, ipadapter-sdxl (IP-Adapter checkpoints in h94's form, .bin and
.safetensors), lora-sd, lora-sdxl (LoRAs made with peft, saved in diffusers' and kohya's forms). Each builds the
pipeline, exports it with the script, and compares ONNX Runtime on the exported files with diffusers in PyTorch
(IP-Adapter: diffusers' own IP-Adapter path, image_embeds through the UNet's projection; LoRA: the LoRA fused
into the UNet) to 1e-4. lora-ipadapter-sd: export_lora.py with an IP-Adapter too, one UNet taking both. Each
also runs reference_stream.py on the exported folder. Prints one JSON line with the largest differences (and the
effects, which must not be nil); exit status 0 when all agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import onnx_adapter  # noqa: E402
import reference_style as style  # noqa: E402

TOL = 1e-4
SIZE = 64


# ---------------------------------------------------------------- tiny pipelines

def tokenizer(dest: Path, pad: str):
    """A CLIP tokenizer over a 100-token byte-level vocabulary (enough for the tests' prompts)."""
    from transformers import CLIPTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (dest / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (dest / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(dest / "vocab.json"), str(dest / "merges.txt"), pad_token=pad, model_max_length=77)
    tok.save_pretrained(str(dest))
    return CLIPTokenizer.from_pretrained(str(dest))


def text_config(hidden: int, vocab: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                          eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=projection or hidden)


def build_pipeline(dest: Path, xl: bool, seed: int):
    """A tiny SD 1.5 or SDXL pipeline saved with save_pretrained; returns it."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[4, 4, 4, 4], layers_per_block=1,
                        latent_channels=4, norm_num_groups=2, sample_size=SIZE)
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1)
    kw = dict(sample_size=SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, norm_num_groups=4)
    tmp = dest.parent / (dest.name + "-tok")
    if xl:
        t1, t2 = tokenizer(tmp / "1", "<|endoftext|>"), tokenizer(tmp / "2", "!")
        vocab = len(t1)
        unet = UNet2DConditionModel(**kw, cross_attention_dim=32, use_linear_projection=True,
                                    addition_embed_type="text_time", addition_time_embed_dim=4,
                                    projection_class_embeddings_input_dim=6 * 4 + 16,
                                    transformer_layers_per_block=(1, 2))
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(text_config(16, vocab)),
                                         text_encoder_2=CLIPTextModelWithProjection(text_config(16, vocab, 16)),
                                         tokenizer=t1, tokenizer_2=t2, unet=unet, scheduler=sched)
    else:
        t1 = tokenizer(tmp / "1", "<|endoftext|>")
        unet = UNet2DConditionModel(**kw, cross_attention_dim=16)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(text_config(16, len(t1))), tokenizer=t1,
                                       unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe = pipe.to(torch.float32)
    pipe.save_pretrained(str(dest), safe_serialization=True)
    return pipe


def optimum_export(src: Path, dest: Path) -> None:
    cli = Path(sys.executable).parent / "optimum-cli"
    res = subprocess.run([str(cli), "export", "onnx", "--model", str(src), "--task", "text-to-image", str(dest)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"optimum-cli failed:\n{res.stderr[-3000:]}")


def run_script(name: str, *argv, status: int = 0) -> str:
    """Runs scripts/NAME; returns its stderr (it must exit with `status`)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, argv)], capture_output=True,
                         text=True)
    if res.returncode != status:
        raise SystemExit(f"{name} exited with {res.returncode}, not {status}:\n{res.stdout[-2000:]}\n"
                         f"{res.stderr[-4000:]}")
    return res.stderr


def reference_frames(model: Path, work: Path, label: str, *extra) -> list:
    """reference_stream.py on the exported folder (two frames, 64 x 64): the layout works end to end."""
    import contextlib
    import io

    import reference_stream

    inputs = work / "frames"
    if not inputs.is_dir():
        inputs.mkdir()
        for k in range(2):
            np.random.default_rng(40 + k).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8).tofile(
                inputs / f"frame_{k:03d}.rgb")
    out = work / f"ref-{label}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = reference_stream.main(["--model", str(model), "--width", str(SIZE), "--height", str(SIZE), "--inputs",
                                    str(inputs), "--out", str(out), "--prompt", "a (red:1.2) fox", "--t-index-list",
                                    "20,35", "--cfg-type", "full", *map(str, extra)])
    assert rc == 0, err.getvalue()
    return [np.fromfile(out / f"frame_{k:03d}.f32", dtype="<f4") for k in range(2)]


def unet_inputs(pipe, batch=2, seed=3, seq=77):
    g = torch.Generator().manual_seed(seed)
    d = pipe.unet.config.cross_attention_dim
    ins = {"sample": torch.randn(batch, 4, SIZE // 8, SIZE // 8, generator=g),
           "timestep": torch.tensor([700.0, 300.0][:batch]),
           "encoder_hidden_states": torch.randn(batch, seq, d, generator=g)}
    if pipe.unet.config.addition_embed_type == "text_time":
        pooled = pipe.unet.config.projection_class_embeddings_input_dim - 6 * pipe.unet.config.addition_time_embed_dim
        ins["text_embeds"] = torch.randn(batch, pooled, generator=g)
        ins["time_ids"] = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * batch, dtype=torch.float32)
    return ins


def torch_unet(unet, ins, image_embeds=None):
    added = {k: ins[k] for k in ("text_embeds", "time_ids") if k in ins}
    if image_embeds is not None:
        added["image_embeds"] = [image_embeds]
    with torch.no_grad():
        return unet(ins["sample"], ins["timestep"], ins["encoder_hidden_states"],
                    added_cond_kwargs=added or None, return_dict=False)[0].numpy()


def feeds_of(ins) -> dict:
    return {k: v.numpy() for k, v in ins.items()}


# ---------------------------------------------------------------- IP-Adapter

def vision_encoder(dest: Path, hidden: int, projection: int, seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                                                         num_hidden_layers=3, num_attention_heads=2, image_size=32,
                                                         patch_size=8, projection_dim=projection)).eval()
    enc.save_pretrained(str(dest))
    return enc


# The resampler block's parts: diffusers' name -> h94's (after layers.{i}.).
H94_NAMES = [("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.weight", "0.to_q.weight"),
             ("attn.to_out.0.weight", "0.to_out.weight"), ("ff.0.", "1.0."), ("ff.1.net.0.proj.weight", "1.1.weight"),
             ("ff.1.net.2.weight", "1.3.weight")]


def plus_to_h94(sd: dict) -> dict:
    """diffusers' IPAdapterPlusImageProjection state dict -> h94's Resampler names (the inverse of diffusers'
    _convert_ip_adapter_image_proj_to_diffusers)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] != "layers":
            out[k] = v
            continue
        i, rest = parts[1], ".".join(parts[2:])
        if rest == "attn.to_k.weight":
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat([v, sd[f"layers.{i}.attn.to_v.weight"]], 0)
            continue
        if rest == "attn.to_v.weight":
            continue
        for old, new in H94_NAMES:
            if rest.startswith(old):
                out[f"layers.{i}.{new}{rest[len(old):]}"] = v
                break
        else:
            raise KeyError(k)
    return out


def ip_checkpoint(unet, enc, plus: bool, seed: int) -> dict:
    """A random IP-Adapter checkpoint for `unet` in h94's form (what h94/IP-Adapter's files hold)."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    D = unet.config.cross_attention_dim
    if plus:
        proj = IPAdapterPlusImageProjection(embed_dims=enc.config.hidden_size, output_dims=D, hidden_dims=32,
                                            heads=1, num_queries=16)
        for p in proj.parameters():
            torch.nn.init.normal_(p, std=0.2)
        image_proj = plus_to_h94(proj.state_dict())
    else:
        proj = ImageProjection(image_embed_dim=enc.config.projection_dim, cross_attention_dim=D,
                               num_image_text_embeds=4)
        for p in proj.parameters():
            torch.nn.init.normal_(p, std=0.3)
        image_proj = {k.replace("image_embeds", "proj"): v for k, v in proj.state_dict().items()}
    ip, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        ip[f"{key}.to_k_ip.weight"] = torch.randn(hidden, D) * 0.5
        ip[f"{key}.to_v_ip.weight"] = torch.randn(hidden, D) * 0.5
        key += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


def save_checkpoint(sd: dict, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{part}.{k}": v.contiguous() for part in sd for k, v in sd[part].items()}, str(path))
    else:
        torch.save(sd, str(path))


def check_ipadapter(work: Path, xl: bool, plus: bool) -> dict:
    import onnxruntime as ort
    from PIL import Image

    pipe = build_pipeline(work / "base", xl, seed=11)
    enc = vision_encoder(work / "image_encoder", 24 if xl else 16, 20 if xl else 12, seed=12)
    ckpt = ip_checkpoint(pipe.unet, enc, plus, seed=13)
    optimum_export(work / "base", work / "base-onnx")
    result = {}
    for suffix in (".bin", ".safetensors"):
        path = work / f"ip-adapter{suffix}"
        save_checkpoint(ckpt, path)
        out = work / f"out{suffix.replace('.', '-')}"
        run_script("export_ipadapter.py", "--base", work / "base", "--ip-adapter", path, "--image-encoder",
                   work / "image_encoder", "--out", out, "--base-onnx", work / "base-onnx")
        result[suffix] = out
    out = result[".safetensors"]
    for f in ("unet/model.onnx", "image_encoder/model.onnx", "image_proj/model.onnx", "text_encoder/model.onnx",
              "vae_decoder/model.onnx", "feature_extractor/preprocessor_config.json", "model_index.json"):
        assert (out / f).is_file(), f
    for f in ("unet/model.onnx", "image_proj/model.onnx"):
        assert (out / f).read_bytes() == (result[".bin"] / f).read_bytes(), f"{f}: .bin and .safetensors differ"

    # diffusers' own IP-Adapter path, from the same checkpoint file.
    pipe.unet._load_ip_adapter_weights([ckpt], low_cpu_mem_usage=False)
    unet = pipe.unet.eval()
    sess = {c: ort.InferenceSession(str(out / c / "model.onnx"), providers=["CPUExecutionProvider"])
            for c in ("unet", "image_encoder", "image_proj")}
    uin = {i.name: i.shape for i in sess["unet"].get_inputs()}
    layers = uin["ipadapter_scale"][0]
    tokens = 16 if plus else 4
    D = unet.config.cross_attention_dim
    assert uin["encoder_hidden_states"] == ["batch_size", 77 + tokens, D], uin
    n_ip = sum(1 for n in unet.attn_processors if n.endswith("attn2.processor"))
    assert layers == n_ip, (layers, n_ip)

    # Image side: the reference's preprocessing and the exported graphs against transformers + diffusers.
    side = style.ImageSide(out)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(work / "style.png")
    pixels = style.preprocess(rgb, side.cfg)
    tokens_ort = side.tokens(rgb)
    with torch.no_grad():
        eo = enc(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
        embeds = eo.hidden_states[-2] if plus else eo.image_embeds
        tokens_torch = unet.encoder_hid_proj([embeds[:, None]])[0][:, 0].numpy()
        zeros = torch.zeros_like(torch.from_numpy(pixels))
        neg_embeds = enc(pixel_values=zeros, output_hidden_states=True).hidden_states[-2] if plus else \
            torch.zeros_like(embeds)
        neg_torch = unet.encoder_hid_proj([neg_embeds[:, None]])[0][:, 0].numpy()
    diff = {"tokens": float(np.abs(tokens_ort - tokens_torch).max()),
            "negative_tokens": float(np.abs(side.negative_tokens() - neg_torch).max())}

    # UNet: text + image tokens and per-layer scales against diffusers' processors with those scales.
    ins = unet_inputs(pipe)
    embeds2 = embeds.repeat(2, *[1] * (embeds.ndim - 1))
    wants = {}
    for label, scales in (("scale1", np.ones(layers)), ("scales", np.linspace(0.2, 1.4, layers)),
                          ("scale0", np.zeros(layers))):
        k = 0
        for p in unet.attn_processors.values():
            if hasattr(p, "to_k_ip"):
                p.scale = [float(scales[k])]
                k += 1
        want = torch_unet(unet, ins, embeds2[:, None])
        feeds = feeds_of(ins)
        feeds["encoder_hidden_states"] = np.concatenate([feeds["encoder_hidden_states"],
                                                         np.repeat(tokens_ort, 2, axis=0)], axis=1)
        feeds["ipadapter_scale"] = scales.astype(np.float32)
        got = sess["unet"].run(None, feeds)[0]
        diff[f"unet_{label}"] = float(np.abs(got - want).max())
        wants[label] = want
    diff["effect_image"] = float(np.abs(wants["scale1"] - wants["scale0"]).max())
    diff["effect_layer_scales"] = float(np.abs(wants["scale1"] - wants["scales"]).max())
    plain = reference_frames(out, work, "plain")
    styled = reference_frames(out, work, "styled", "--ip-adapter-image", work / "style.png")
    diff["effect_reference"] = float(np.abs(plain[0] - styled[0]).max())
    return diff


# ---------------------------------------------------------------- LoRA

def kohya_form(sd: dict, alphas: dict) -> dict:
    """diffusers-form LoRA keys (unet.<module>.lora_A/B.weight) -> kohya's (lora_unet_<module_>.lora_down/up)."""
    out = {}
    for k, v in sd.items():
        module, _, kind = k[len("unet."):].rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = v
        out[f"{name}.alpha"] = torch.tensor(float(alphas[module]))
    return out


def make_lora(unet, rank: int, alpha: float, targets: list[str], seed: int, name: str):
    """A random LoRA made with peft: (diffusers-form state dict, alpha per module)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False),
                     adapter_name=name)
    for n, p in unet.named_parameters():
        if f".{name}." in n and "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    sd = get_peft_model_state_dict(unet, adapter_name=name)
    unet.delete_adapters(name)
    sd = {f"unet.{k}": v for k, v in sd.items()}
    modules = {k[len("unet."):].rpartition(".lora_")[0] for k in sd}
    return sd, {m: alpha for m in modules}


def check_lora(work: Path, xl: bool) -> dict:
    import onnxruntime as ort
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    pipe_cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    pipe = build_pipeline(work / "base", xl, seed=21)
    optimum_export(work / "base", work / "base-onnx")
    a_sd, a_alpha = make_lora(pipe.unet, 4, 8.0, ["to_q", "to_k", "to_v", "to_out.0"], 22, "a")
    b_sd, b_alpha = make_lora(pipe.unet, 2, 1.0, ["to_k", "ff.net.2"], 23, "b")
    # style-a in diffusers' form (no alpha there: its alpha / r = 2 goes into B), and the same LoRA in kohya's form
    # (alpha in the file); style-b in kohya's form. The same LoRA must export to the same adapter.
    scaled = {k[len("unet."):]: (v * 2.0 if ".lora_B." in k else v) for k, v in a_sd.items()}
    pipe_cls.save_lora_weights(str(work), unet_lora_layers=scaled, weight_name="style-a.safetensors")
    save_file({k: v.contiguous() for k, v in kohya_form(a_sd, a_alpha).items()},
              str(work / "style-a-kohya.safetensors"))
    # style-b also carries a text-encoder part (left out with a warning).
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj" if not xl else \
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    te_part = {f"{te}.lora_down.weight": torch.randn(2, 16), f"{te}.lora_up.weight": torch.randn(16, 2),
               f"{te}.alpha": torch.tensor(2.0)}
    save_file({**{k: v.contiguous() for k, v in kohya_form(b_sd, b_alpha).items()}, **te_part},
              str(work / "style-b.safetensors"))
    files = {n: work / f"{n}.safetensors" for n in ("style-a", "style-b", "style-a-kohya")}
    out = work / "out"
    log = run_script("export_lora.py", "--base", work / "base", *sum((["--lora", f] for f in files.values()), []),
                     "--out", out, "--base-onnx", work / "base-onnx")
    assert "style-b.safetensors: 2 tensors for text_encoder" in log and "left out" in log, log
    # A LoRA on convolutions (LoCon) is refused, or with --skip-unsupported left out in part.
    c_sd, _ = make_lora(pipe.unet, 2, 2.0, ["conv1", "to_q"], 24, "c")
    pipe_cls.save_lora_weights(str(work), unet_lora_layers={k[5:]: v for k, v in c_sd.items()},
                               weight_name="locon.safetensors")
    log = run_script("export_lora.py", "--base", work / "base", "--lora", work / "locon.safetensors", "--out",
                     work / "out-locon", "--base-onnx", work / "base-onnx", status=1)
    assert "LoRA layers this layout cannot take" in log and "(Conv2d)" in log and "--skip-unsupported" in log, log
    assert not (work / "out-locon").exists()
    run_script("export_lora.py", "--base", work / "base", "--lora", work / "locon.safetensors", "--out",
               work / "out-locon", "--base-onnx", work / "base-onnx", "--skip-unsupported")
    locon = onnx_adapter.read(work / "out-locon" / "loras" / "locon.onnx_adapter")
    assert locon.parameters and all(".to_q.lora_" in k for k in locon.parameters), list(locon.parameters)
    adapters = {n: onnx_adapter.read(out / "loras" / f"{n}.onnx_adapter") for n in files}
    a = adapters["style-a"]
    assert set(a.parameters) == set(adapters["style-a-kohya"].parameters)
    diff = {"kohya_vs_diffusers": max(float(np.abs(v - adapters["style-a-kohya"].parameters[k]).max())
                                      for k, v in a.parameters.items())}
    theirs = ort.AdapterFormat.read_adapter(str(out / "loras" / "style-a.onnx_adapter")).get_parameters()
    assert all(np.array_equal(theirs[k].numpy(), a.parameters[k]) for k in a.parameters)

    sess = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    slots = style.lora_slots(sess.get_inputs())
    for n, adapter in adapters.items():
        style.check_adapter(adapter, slots, n)
    ins = unet_inputs(pipe)
    feeds = feeds_of(ins)
    plain = torch_unet(pipe.unet, ins)
    diff["none"] = float(np.abs(sess.run(None, {**feeds, **style.lora_feeds(slots, [])})[0] - plain).max())
    for label, combo in (("a", [("style-a", 0.8)]), ("b", [("style-b", 1.0)]), ("ab", [("style-a", 0.7),
                                                                                      ("style-b", -0.5)])):
        # diffusers' way: load_lora_weights' loader on the same files, then fuse_lora at the scales.
        for n, _ in combo:
            sd, alphas = pipe_cls.lora_state_dict(str(files[n]), unet_config=pipe.unet.config)
            pipe_cls.load_lora_into_unet(sd, alphas, pipe.unet, adapter_name=n.replace("-", "_"))
        names = [n.replace("-", "_") for n, _ in combo]
        pipe.unet.set_adapters(names, [s for _, s in combo])
        active = torch_unet(pipe.unet, ins)
        pipe.unet.fuse_lora(adapter_names=names)
        fused = torch_unet(pipe.unet, ins)
        pipe.unet.unfuse_lora()
        pipe.unet.unload_lora()
        got = sess.run(None, {**feeds, **style.lora_feeds(slots, [(adapters[n], s) for n, s in combo])})[0]
        diff[f"lora_{label}"] = float(np.abs(got - fused).max())
        diff[f"fused_vs_active_{label}"] = float(np.abs(fused - active).max())
        diff[f"effect_{label}"] = float(np.abs(active - plain).max())
    before = reference_frames(out, work, "plain")
    after = reference_frames(out, work, "lora", "--lora", f"{out / 'loras' / 'style-a.onnx_adapter'}:0.8")
    diff["effect_reference"] = float(np.abs(before[0] - after[0]).max())
    return diff


def check_lora_with_ipadapter(work: Path) -> dict:
    """export_lora.py --ip-adapter: one UNet with both, against diffusers with both (IP-Adapter loaded, LoRA
    fused)."""
    import onnxruntime as ort
    from diffusers import StableDiffusionPipeline

    pipe = build_pipeline(work / "base", False, seed=31)
    enc = vision_encoder(work / "image_encoder", 16, 12, seed=32)
    ckpt = ip_checkpoint(pipe.unet, enc, False, seed=33)
    save_checkpoint(ckpt, work / "ip-adapter.safetensors")
    a_sd, a_alpha = make_lora(pipe.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"], 34, "a")
    StableDiffusionPipeline.save_lora_weights(str(work), unet_lora_layers={k[5:]: v for k, v in a_sd.items()},
                                              weight_name="style.safetensors")
    optimum_export(work / "base", work / "base-onnx")
    out = work / "out"
    run_script("export_lora.py", "--base", work / "base", "--lora", work / "style.safetensors", "--ip-adapter",
               work / "ip-adapter.safetensors", "--image-encoder", work / "image_encoder", "--out", out,
               "--base-onnx", work / "base-onnx")
    sess = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    slots = style.lora_slots(sess.get_inputs())
    adapter = onnx_adapter.read(out / "loras" / "style.onnx_adapter")
    style.check_adapter(adapter, slots, "style")
    layers = {i.name: i.shape for i in sess.get_inputs()}["ipadapter_scale"][0]
    side = style.ImageSide(out)
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    with torch.no_grad():
        embeds = enc(pixel_values=torch.from_numpy(style.preprocess(rgb, side.cfg))).image_embeds
    pipe.unet._load_ip_adapter_weights([ckpt], low_cpu_mem_usage=False)
    sd, alphas = StableDiffusionPipeline.lora_state_dict(str(work / "style.safetensors"))
    StableDiffusionPipeline.load_lora_into_unet(sd, alphas, pipe.unet, adapter_name="style")
    pipe.unet.set_adapters(["style"], [0.6])
    pipe.unet.fuse_lora(adapter_names=["style"])
    k = 0
    scales = np.linspace(0.3, 1.2, layers)
    for p in pipe.unet.attn_processors.values():
        if hasattr(p, "to_k_ip"):
            p.scale = [float(scales[k])]
            k += 1
    ins = unet_inputs(pipe)
    want = torch_unet(pipe.unet, ins, embeds.repeat(2, 1)[:, None])
    feeds = feeds_of(ins)
    feeds["encoder_hidden_states"] = np.concatenate([feeds["encoder_hidden_states"],
                                                     np.repeat(side.tokens(rgb), 2, axis=0)], axis=1)
    feeds["ipadapter_scale"] = scales.astype(np.float32)
    got = sess.run(None, {**feeds, **style.lora_feeds(slots, [(adapter, 0.6)])})[0]
    none = sess.run(None, {**feeds, **style.lora_feeds(slots, [])})[0]
    return {"unet": float(np.abs(got - want).max()), "effect_lora": float(np.abs(got - none).max())}


def main(argv) -> int:
    case, work = argv[0], Path(argv[1])
    work.mkdir(parents=True, exist_ok=True)
    checks = {
        "ipadapter-sd": lambda: check_ipadapter(work, xl=False, plus=False),
        "ipadapter-plus-sd": lambda: check_ipadapter(work, xl=False, plus=True),
        "ipadapter-sdxl": lambda: check_ipadapter(work, xl=True, plus=False),
        "lora-sd": lambda: check_lora(work, xl=False),
        "lora-sdxl": lambda: check_lora(work, xl=True),
        "lora-ipadapter-sd": lambda: check_lora_with_ipadapter(work),
    }
    diff = checks[case]()
    print(json.dumps(diff))
    bad = {k: v for k, v in diff.items()
           if not k.startswith("effect_") and not (v <= TOL)}
    effects = {k: v for k, v in diff.items() if k.startswith("effect_") and not v > 1e-3}
    if bad or effects:
        print(f"disagree: {bad} / no effect: {effects}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
