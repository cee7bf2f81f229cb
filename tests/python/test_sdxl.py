"""Checks of the tiny SDXL-family models and of the SDXL conditioning in the numpy reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "python"))

import reference_stream  # noqa: E402
from i2i_models import clip_vocab, sdxl  # noqa: E402
from test_models import models, read_out, run_ref, session, write_frames  # noqa: E402,F401

XL = [v.name for v in sdxl.VARIANTS]


def outputs(s: ort.InferenceSession) -> list[str]:
    return [o.name for o in s.get_outputs()]


def test_layouts_and_signatures(models):
    d = models / "tiny-sdxl"
    idx = json.loads((d / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionXLPipeline" and idx["force_zeros_for_empty_prompt"] is True
    assert (d / "unet" / "model.onnx_data").stat().st_size > (d / "unet" / "model.onnx").stat().st_size
    te = session(d / "text_encoder" / "model.onnx")
    assert outputs(te) == ["last_hidden_state", "pooler_output"] + [f"hidden_states.{i}" for i in range(3)]
    te2 = session(d / "text_encoder_2" / "model.onnx")
    assert outputs(te2) == ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(3)]
    unet = session(d / "unet" / "model.onnx")
    assert [i.name for i in unet.get_inputs()] == ["sample", "timestep", "encoder_hidden_states", "text_embeds",
                                                    "time_ids"]
    assert unet.get_inputs()[2].shape[2] == sdxl.E1 + sdxl.E2
    assert json.loads((d / "vae_decoder" / "config.json").read_text())["scaling_factor"] == 0.13025
    fp16 = models / "tiny-sdxl-fp16"
    assert json.loads((fp16 / "vae_decoder" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert session(fp16 / "unet" / "model.onnx").get_inputs()[3].type == "tensor(float16)"
    demo = models / "tiny-sdxl-ortdemo"
    assert not (demo / "model_index.json").exists() and not (demo / "vae_decoder" / "config.json").exists()
    assert outputs(session(demo / "text_encoder" / "model.onnx")) == ["text_embeddings", "hidden_states"]
    te2 = session(demo / "text_encoder_2" / "model.onnx")
    assert outputs(te2) == ["text_embeddings", "hidden_states"] and te2.get_outputs()[0].shape == ["batch_size", 40]
    assert te2.get_inputs()[0].type == "tensor(int32)"
    unet = session(demo / "unet" / "model.onnx")
    assert unet.get_inputs()[1].shape == [1] and outputs(unet) == ["latent"]
    assert [i.name for i in session(demo / "vae_encoder" / "model.onnx").get_inputs()] == ["images"]
    assert outputs(session(demo / "vae_decoder" / "model.onnx")) == ["images"]
    for name in XL:
        for t, pad in (("tokenizer", clip_vocab.EOS), ("tokenizer_2", "!")):
            stm = json.loads((models / name / t / "special_tokens_map.json").read_text())
            assert stm["pad_token"]["content"] == pad


@pytest.mark.parametrize("name", XL)
def test_unet_uses_every_conditioning_input(models, name):
    s = session(models / name / "unet" / "model.onnx")
    ins = {i.name: i for i in s.get_inputs()}
    fdt = np.float16 if name.endswith("fp16") else np.float32
    rng = np.random.default_rng(0)
    ts = ins["timestep"]
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(fdt),
        "timestep": (np.asarray(500.0) if len(ts.shape) == 0 else np.full(ts.shape, 500.0)).astype(
            reference_stream.ORT_TO_NP[ts.type]),
        "encoder_hidden_states": rng.standard_normal((2, 77, sdxl.E1 + sdxl.E2)).astype(fdt),
        "text_embeds": rng.standard_normal((2, sdxl.POOLED)).astype(fdt),
        "time_ids": np.asarray([[64, 64, 0, 0, 64, 64]] * 2).astype(fdt),
    }
    if "controlnet_images" in ins:  # a fused ControlNet graph (tests/python/test_controlnet.py)
        feeds["controlnet_images"] = rng.random((1, 2, 3, 64, 64)).astype(fdt)
        feeds["controlnet_scales"] = np.ones(1, dtype=fdt)
    base = s.run(None, feeds)[0].astype(np.float32)
    assert np.isfinite(base).all() and 0.05 < float(np.abs(base).mean()) < 20
    for key, change in (("encoder_hidden_states", lambda a: a[:, :, :sdxl.E1]),
                        ("encoder_hidden_states", lambda a: a[:, :, sdxl.E1:]),
                        ("text_embeds", lambda a: a), ("time_ids", lambda a: a[:, :2])):
        f = dict(feeds)
        arr = f[key].copy()
        change(arr)[...] = 0  # zero one part (a view)
        f[key] = arr
        assert float(np.abs(s.run(None, f)[0].astype(np.float32) - base).max()) > 1e-3, key


def test_tokenizer_2_fixture_matches_transformers(models):
    from transformers import CLIPTokenizer

    data = json.loads((ROOT / "tests" / "fixtures" / "tokenizer_2_ids.json").read_text(encoding="utf-8"))
    prompts = json.loads((ROOT / "tests" / "fixtures" / "tokenizer_ids.json").read_text(encoding="utf-8"))
    assert [c["prompt"] for c in data["cases"]] == [c["prompt"] for c in prompts["cases"]]
    tok = CLIPTokenizer.from_pretrained(str(models / "tiny-sdxl" / "tokenizer_2"))
    assert tok.pad_token_id == 0 and data["tokenizers"]["tiny-sdxl/tokenizer_2"]["pad_id"] == 0
    for case in data["cases"]:
        ids = tok(case["prompt"], padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert ids == case["ids"]["tiny-sdxl/tokenizer_2"], case["prompt"]


def test_reference_conditioning_is_diffusers_sdxl(models):
    """Penultimate hidden states of both encoders concatenated, pooled of encoder 2, zero negatives."""
    from transformers import CLIPTokenizer

    d = models / "tiny-sdxl"
    m = reference_stream.Model(d, 1)
    assert m.xl and m.force_zeros and m.sf == np.float32(0.13025)
    c = m.encode_prompt("a red car")
    ids1 = np.asarray([CLIPTokenizer.from_pretrained(str(d / "tokenizer"))("a red car", padding="max_length",
                                                                           max_length=77)["input_ids"]])
    ids2 = np.asarray([CLIPTokenizer.from_pretrained(str(d / "tokenizer_2"))("a red car", padding="max_length",
                                                                             max_length=77)["input_ids"]])
    assert ids1[0, -1] == 49407 and ids2[0, -1] == 0  # the two pad conventions
    o1 = dict(zip(outputs(m.sess["text_encoder"]), m.sess["text_encoder"].run(None, {"input_ids": ids1})))
    o2 = dict(zip(outputs(m.sess["text_encoder_2"]), m.sess["text_encoder_2"].run(None, {"input_ids": ids2})))
    want = np.concatenate([o1["hidden_states.1"], o2["hidden_states.1"]], axis=-1)
    assert np.array_equal(c["encoder_hidden_states"], want)
    assert not np.allclose(o1["hidden_states.1"], o1["last_hidden_state"], atol=1e-2)
    assert np.array_equal(c["text_embeds"], o2["text_embeds"])
    neg = m.encode_negative("")
    assert not neg["encoder_hidden_states"].any() and not neg["text_embeds"].any()
    assert neg["text_embeds"].shape == (1, sdxl.POOLED)
    assert m.encode_negative("blurry")["text_embeds"].any()
    cond = m.conditioning(c, 48, 64)
    assert cond["time_ids"].tolist() == [[48, 64, 0, 0, 48, 64]]


def test_both_layouts_give_the_same_pictures(models, tmp_path):
    """The ORT demo layout of the same weights gives the optimum layout's result (names differ, math not)."""
    from i2i_models import clip_vocab as cv
    import make_models  # noqa: F401

    vocab, merges = cv.vocab_and_merges(cv.bpe_gz_bytes(ROOT / ".deps", print))
    v = next(x for x in sdxl.VARIANTS if x.name == "tiny-sdxl")
    demo = sdxl.Variant("same-ortdemo", layout="ortdemo", ids_dtype=np.int32, timestep="float32[1]", seed=v.seed)
    sdxl.write(tmp_path / "m", demo, vocab, merges, {})
    write_frames(tmp_path / "in", 1, 64, 64)
    args = ["--prompt", "a red car", "--seed", "3", "--cfg-type", "full", "--guidance-scale", "1.6"]
    assert run_ref(models / "tiny-sdxl", tmp_path / "in", tmp_path / "a", *args).returncode == 0
    assert run_ref(tmp_path / "m", tmp_path / "in", tmp_path / "b", *args).returncode == 0
    assert float(np.abs(read_out(tmp_path / "a", 0) - read_out(tmp_path / "b", 0)).max()) < 1e-6


@pytest.mark.parametrize("name", XL)
def test_reference_runs_and_reacts(models, name, tmp_path):
    write_frames(tmp_path / "in", 1, 64, 64)
    outs = {}
    for tag, extra in (("none", ["--cfg-type", "none"]), ("full", ["--cfg-type", "full"]),
                       ("self", ["--cfg-type", "self"]), ("init", ["--cfg-type", "initialize"]),
                       ("neg", ["--cfg-type", "full", "--negative-prompt", "blurry"]),
                       ("prompt", ["--cfg-type", "none", "--prompt", "a blue boat"]),
                       ("seed", ["--cfg-type", "none", "--seed", "9"])):
        r = run_ref(models / name, tmp_path / "in", tmp_path / tag, "--prompt", "a red car", "--seed", "5",
                    "--t-index-list", "20,35,45", "--guidance-scale", "1.5", *extra)
        assert r.returncode == 0, r.stderr
        outs[tag] = read_out(tmp_path / tag, 0)
        assert np.isfinite(outs[tag]).all() and float(((outs[tag] <= 0) | (outs[tag] >= 1)).mean()) < 0.2
    for tag in ("full", "self", "init", "neg", "prompt", "seed"):
        assert float(np.abs(outs[tag] - outs["none"]).max()) > 1e-3, tag
    assert float(np.abs(outs["neg"] - outs["full"]).max()) > 1e-3  # a non-empty negative is not zeros


def test_reference_refuses_sdxl_unet_without_second_encoder(models, tmp_path):
    import shutil

    shutil.copytree(models / "tiny-sdxl", tmp_path / "m", ignore=shutil.ignore_patterns("text_encoder_2"))
    write_frames(tmp_path / "in", 1, 64, 64)
    r = run_ref(tmp_path / "m", tmp_path / "in", tmp_path / "o")
    assert r.returncode == 2 and "text_encoder_2" in r.stderr


def test_sdxl_turbo_shaped_builder_small(tmp_path):
    """The sdxl-turbo-shaped graphs, built at small widths: optimum's SDXL signatures, and they run end to end;
    at full size the UNet has SDXL's 2,567,463,684 parameters (counted without building the weights)."""
    from i2i_models import sdxlturbo

    assert sdxlturbo.unet_parameters() == 2_567_463_684
    d = tmp_path / "xl"
    sdxlturbo.write(d, log=lambda m: None, dims=sdxlturbo.SMALL)
    unet = session(d / "unet" / "model.onnx")
    assert [(i.name, len(i.shape)) for i in unet.get_inputs()] == [
        ("sample", 4), ("timestep", 0), ("encoder_hidden_states", 3), ("text_embeds", 2), ("time_ids", 2)]
    te2 = outputs(session(d / "text_encoder_2" / "model.onnx"))
    assert te2[:2] == ["text_embeds", "last_hidden_state"] and te2[-1] == "hidden_states.2"
    write_frames(tmp_path / "in", 1, 64, 64)
    r = run_ref(d, tmp_path / "in", tmp_path / "out", "--prompt", "a red car", "--cfg-type", "full")
    assert r.returncode == 0, r.stderr
    out = read_out(tmp_path / "out", 0)
    assert np.isfinite(out).all() and float(out.std()) > 1e-3
