"""Styles: the tiny IP-Adapter and LoRA models (scripts/i2i_models/ipadapter.py, lora.py), the adapter-file reader
(onnx_adapter.py), and the reference math (reference_style.py) against ONNX Runtime and transformers."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "python"))

import onnx_adapter  # noqa: E402
import reference_stream  # noqa: E402
import reference_style as style  # noqa: E402
from i2i_models import attnunet, ipadapter, lora  # noqa: E402

IP = {v.name: v for v in ipadapter.VARIANTS}
ADAPTERS = {a: f"loras/{a}.onnx_adapter" for a in lora.ADAPTERS}


session = style.session  # the `models` fixture: conftest.py


def unet_feeds(s: ort.InferenceSession, rng, batch=2, seq=None) -> dict:
    ins = {i.name: i for i in s.get_inputs()}
    ehs = ins["encoder_hidden_states"].shape
    seq = seq or (ehs[1] if isinstance(ehs[1], int) else 77)
    feeds = {"sample": rng.standard_normal((batch, 4, 8, 8)).astype(np.float32),
             "timestep": attnunet.timestep_feed("int64[B]" if ins["timestep"].type == "tensor(int64)" else "float32[B]",
                                                500, batch),
             "encoder_hidden_states": rng.standard_normal((batch, seq, ehs[2])).astype(np.float32)}
    if "text_embeds" in ins:
        feeds["text_embeds"] = rng.standard_normal((batch, ins["text_embeds"].shape[1])).astype(np.float32)
        feeds["time_ids"] = np.asarray([[64, 64, 0, 0, 64, 64]] * batch, dtype=np.float32)
    if "ipadapter_scale" in ins:
        feeds["ipadapter_scale"] = np.ones(ins["ipadapter_scale"].shape, np.float32)
    return feeds


def picture(w=40, h=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 256], -1) + rng.integers(-30, 30, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- IP-Adapter models

@pytest.mark.parametrize("name", list(IP))
def test_ipadapter_layout(models, name):
    v, d = IP[name], models / name
    u = session(d / "unet" / "model.onnx")
    ins = {i.name: i for i in u.get_inputs()}
    assert ins["encoder_hidden_states"].shape == ["batch_size", 77 + v.tokens, v.cross_dim]
    assert ins["ipadapter_scale"].shape == [v.layers] and ins["ipadapter_scale"].type == "tensor(float)"
    assert ins["timestep"].shape == ["batch_size"] and ins["timestep"].type == "tensor(float)"
    assert [o.name for o in u.get_outputs()] == ["latent"]
    assert ("text_embeds" in ins) == v.xl
    enc = session(d / "image_encoder" / "model.onnx")
    vis = v.vision()
    assert [(i.name, i.shape) for i in enc.get_inputs()] == \
        [("pixel_values", ["batch_size", 3, vis.image_size, vis.image_size])]
    assert [(o.name, o.shape) for o in enc.get_outputs()] == \
        [("image_embeds", ["batch_size", vis.projection]), ("hidden_states", ["batch_size", vis.tokens, vis.hidden])]
    proj = session(d / "image_proj" / "model.onnx")
    assert [i.name for i in proj.get_inputs()] == ["hidden_states" if v.plus else "image_embeds"]
    assert [(o.name, o.shape) for o in proj.get_outputs()] == \
        [("image_prompt_embeds", ["batch_size", v.tokens, v.cross_dim])]
    cfg = json.loads((d / "image_proj" / "config.json").read_text())
    assert cfg["num_image_text_embeds"] == v.tokens and cfg["num_ip_layers"] == v.layers
    assert cfg["_class_name"] == ("IPAdapterPlusImageProjection" if v.plus else "ImageProjection")
    pre = json.loads((d / "feature_extractor" / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": vis.image_size, "width": vis.image_size}
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    index = json.loads((d / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert json.loads((d / "image_encoder" / "config.json").read_text())["projection_dim"] == vis.projection


@pytest.mark.parametrize("name", list(IP))
def test_ipadapter_tokens_and_scales(models, name):
    """The image tokens change the output, each layer's scale acts on its own, scale 0 and zero tokens are both
    exactly the UNet without the picture."""
    u = session(models / name / "unet" / "model.onnx")
    rng = np.random.default_rng(1)
    feeds = unet_feeds(u, rng)
    n = IP[name].tokens
    side = style.ImageSide(models / name)
    feeds["encoder_hidden_states"][:, -n:] = side.tokens(picture())
    base = u.run(None, feeds)[0]
    layers = feeds["ipadapter_scale"].size
    off = dict(feeds, ipadapter_scale=np.zeros(layers, np.float32))
    no_picture = u.run(None, off)[0]
    assert np.abs(base - no_picture).max() > 1e-2
    zero_tokens = dict(feeds, encoder_hidden_states=feeds["encoder_hidden_states"].copy())
    zero_tokens["encoder_hidden_states"][:, -n:] = 0
    assert np.array_equal(u.run(None, zero_tokens)[0], no_picture)
    # Scale 0: the tokens no longer matter.
    off["encoder_hidden_states"] = zero_tokens["encoder_hidden_states"]
    assert np.array_equal(u.run(None, off)[0], no_picture)
    for layer in range(layers):
        one = np.ones(layers, np.float32)
        one[layer] = 0.0
        assert np.abs(u.run(None, dict(feeds, ipadapter_scale=one))[0] - base).max() > 1e-3, layer
    # The text rows still matter, and the image rows are the last N.
    other = dict(feeds, encoder_hidden_states=feeds["encoder_hidden_states"].copy())
    other["encoder_hidden_states"][:, :77] += 0.5
    assert np.abs(u.run(None, other)[0] - base).max() > 1e-3


@pytest.mark.parametrize("name", list(IP))
def test_ipadapter_image_side(models, name):
    """Preprocessing as transformers' CLIPImageProcessor; the projection reads the encoder output it names;
    the negative tokens follow diffusers' encode_image."""
    from transformers import CLIPImageProcessor

    d = models / name
    side = style.ImageSide(d)
    cfg = json.loads((d / "feature_extractor" / "preprocessor_config.json").read_text())
    proc = CLIPImageProcessor(**{k: v for k, v in cfg.items() if not k.endswith("_type")})
    for w, h in ((40, 48), (48, 40), (32, 32), (100, 37)):
        img = picture(w, h, seed=w)
        ours = style.preprocess(img, cfg)
        theirs = proc(images=img, return_tensors="np")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    tok = side.tokens(picture())
    assert tok.shape == (1, IP[name].tokens, IP[name].cross_dim) and np.isfinite(tok).all()
    assert np.abs(tok - side.tokens(picture(seed=9))).max() > 1e-3
    enc = session(d / "image_encoder" / "model.onnx")
    proj = session(d / "image_proj" / "model.onnx")
    zeros = np.zeros((1, 3, 32, 32), np.float32)
    if IP[name].plus:
        want = proj.run(None, {"hidden_states": enc.run(["hidden_states"], {"pixel_values": zeros})[0]})[0]
    else:
        want = proj.run(None, {"image_embeds": np.zeros((1, IP[name].vision().projection), np.float32)})[0]
    assert np.array_equal(side.negative_tokens(), want)
    # The batch of the image side is free (several pictures at once).
    two = np.concatenate([style.preprocess(picture(), cfg), style.preprocess(picture(seed=9), cfg)])
    np.testing.assert_allclose(side.tokens_for_pixels(two)[0], tok[0], atol=1e-5)


def test_scale_vector():
    assert style.scale_vector(0.5, 3).tolist() == [0.5] * 3
    assert style.scale_vector([0.1, 0.2, 0.3], 3).tolist() == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(style.StyleError, match="2 values for a UNet with 3"):
        style.scale_vector([1, 2], 3)


# ---------------------------------------------------------------- LoRA

def test_adapter_reader_matches_onnxruntime(models):
    for a, rel in ADAPTERS.items():
        p = models / lora.NAME / rel
        ours = onnx_adapter.read(p)
        theirs = ort.AdapterFormat.read_adapter(str(p))
        assert (ours.format_version, ours.adapter_version, ours.model_version) == \
            (theirs.get_format_version(), theirs.get_adapter_version(), theirs.get_model_version())
        params = {k: v.numpy() for k, v in theirs.get_parameters().items()}
        assert set(params) == set(ours.parameters), a
        for k, v in params.items():
            assert v.dtype == ours.parameters[k].dtype and np.array_equal(v, ours.parameters[k]), (a, k)
        assert set(ours.parameters) == set(lora.adapter_parameters(a))


def test_adapter_reader_refuses_damaged_files(models, tmp_path):
    data = (models / lora.NAME / ADAPTERS["style-b"]).read_bytes()
    with pytest.raises(onnx_adapter.AdapterError, match="no 'TORT' identifier"):
        onnx_adapter.read_bytes(b"\x08\x00\x00\x00ONNX" + data[8:], "x")
    # Cut anywhere before the last string's terminating zero: an error that says so.
    for cut in range(0, len(data) - 4, 13):
        with pytest.raises(onnx_adapter.AdapterError, match="outside the file|bytes of data|no name|not"):
            onnx_adapter.read_bytes(data[:cut], "cut")
    rng = np.random.default_rng(0)
    for _ in range(200):  # flipped bytes: an error or a parse, never an exception of another kind
        b = bytearray(data)
        for i in rng.integers(0, len(b), 3):
            b[i] = int(rng.integers(0, 256))
        try:
            onnx_adapter.read_bytes(bytes(b), "flip")
        except onnx_adapter.AdapterError:
            pass


def lora_unet(models):
    s = session(models / lora.NAME / "unet" / "model.onnx")
    return s, style.lora_slots(s.get_inputs())


def fused_unet(deltas: dict) -> ort.InferenceSession:
    g = attnunet.unet(lora.VARIANT.unet_spec(deltas))
    return ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])


def test_lora_layout(models):
    s, slots = lora_unet(models)
    want = attnunet.lora_modules(lora.VARIANT.unet_spec())
    assert list(slots) == list(want) and len(slots) == 16
    for m, (n_in, n_out) in want.items():
        assert slots[m] == {"in": n_in, "out": n_out, "elem": 1}
    ins = {i.name: i.shape for i in s.get_inputs()}
    assert ins[f"{next(iter(want))}.lora_A.weight"] == [16, "lora_r"]


@pytest.mark.parametrize("combo", [[("style-a", 0.8)], [("style-b", 1.0)], [("style-a", 0.6), ("style-b", -0.4)]])
def test_lora_binding_is_w_plus_scale_a_b(models, combo):
    """The UNet with the adapters' tensors bound equals the UNet with W + sum s A B fused into its weights."""
    s, slots = lora_unet(models)
    rng = np.random.default_rng(2)
    feeds = unet_feeds(s, rng)
    active = []
    deltas: dict = {}
    for name, scale in combo:
        a = onnx_adapter.read(models / lora.NAME / ADAPTERS[name])
        style.check_adapter(a, slots, name)
        active.append((a, scale))
        for k, v in a.parameters.items():
            if k.endswith(".lora_A.weight"):
                m = k[:-len(".lora_A.weight")]
                d = scale * (v.astype(np.float64) @ a.parameters[f"{m}.lora_B.weight"].astype(np.float64))
                deltas[m] = deltas.get(m, 0) + d
    bound = s.run(None, {**feeds, **style.lora_feeds(slots, active)})[0]
    fused = fused_unet(deltas).run(None, feeds)[0]
    plain = fused_unet({}).run(None, feeds)[0]
    np.testing.assert_allclose(bound, fused, rtol=0, atol=1e-4)
    assert np.abs(bound - plain).max() > 1e-2
    # Zeros (rank 1, the "no LoRA" binding) and a zero scale are the UNet without LoRA.
    none = s.run(None, {**feeds, **style.lora_feeds(slots, [])})[0]
    np.testing.assert_allclose(none, plain, rtol=0, atol=1e-6)
    zero_scale = s.run(None, {**feeds, **style.lora_feeds(slots, [(a, 0.0) for a, _ in active])})[0]
    assert np.array_equal(zero_scale, none)


def test_lora_fade(models):
    """A fade from style-a at 0.9 to style-b at 0.5 binds both: at t the weights are W + (1 - t) 0.9 dA + t 0.5 dB;
    t = 1 is style-b alone, bit for bit; the same LoRA on both sides is that LoRA at the interpolated scale."""
    s, slots = lora_unet(models)
    feeds = unet_feeds(s, np.random.default_rng(5))
    a = onnx_adapter.read(models / lora.NAME / ADAPTERS["style-a"])
    b = onnx_adapter.read(models / lora.NAME / ADAPTERS["style-b"])

    def run(active):
        return s.run(None, {**feeds, **style.lora_feeds(slots, active)})[0]

    def delta(adapter, scale):
        return {k[:-len(".lora_A.weight")]: scale * (v.astype(np.float64) @ adapter.parameters[
            k.replace("lora_A", "lora_B")].astype(np.float64)) for k, v in adapter.parameters.items() if "lora_A" in k}

    old, new = [(a, 0.9)], [(b, 0.5)]
    t = 0.25
    want = delta(a, 0.9 * (1 - t))
    for m, d in delta(b, 0.5 * t).items():
        want[m] = want.get(m, 0) + d
    np.testing.assert_allclose(run(style.fade_active(old, new, t)), fused_unet(want).run(None, feeds)[0], atol=1e-4)
    assert np.array_equal(run(style.fade_active(old, new, 1.0)), run(new))
    assert np.array_equal(run(style.fade_active(old, new, 0.0)), run(old))
    same = run(style.fade_active([(a, 0.2)], [(a, 1.0)], 0.5))
    np.testing.assert_allclose(same, run([(a, 0.6)]), atol=1e-5)


def test_lora_feeds_are_what_onnxruntime_binds_from_the_file(models):
    """ONNX Runtime's own active-adapter run (not available with IoBinding) feeds the file's tensors as inputs:
    the same output as binding them by hand at scale 1."""
    s, slots = lora_unet(models)
    feeds = unet_feeds(s, np.random.default_rng(3))
    path = models / lora.NAME / ADAPTERS["style-a"]
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    ro = ort.RunOptions()
    ro.add_active_adapter(adapter)
    # The Python wrapper insists on every required input before ONNX Runtime sees the run options, so call the
    # binding underneath it (what the C API's Run does: the adapter's tensors join the feeds).
    theirs = s._sess.run([o.name for o in s.get_outputs()], feeds, ro)[0]
    ours = s.run(None, {**feeds, **style.lora_feeds(slots, [(onnx_adapter.read(path), 1.0)])})[0]
    assert np.array_equal(theirs, ours)


@pytest.mark.parametrize("name,message", [
    ("wrong-name", "parameter mid_block.attentions.0.transformer_blocks.0.attn3.to_v.lora_A.weight: the UNet has "
                   "no input of that name"),
    ("wrong-shape", "parameter mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight: shape "
                    r"\[17, 2\], the UNet takes \[16, r\]"),
    ("wrong-dtype", "parameter mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight: float16, the "
                    "UNet takes float32"),
])
def test_lora_refusals_name_the_first_mismatch(models, name, message):
    _, slots = lora_unet(models)
    with pytest.raises(style.StyleError, match=message):
        style.check_adapter(onnx_adapter.read(models / lora.NAME / ADAPTERS[name]), slots, name)


def test_lora_refuses_unpaired_and_foreign_parameters(models):
    _, slots = lora_unet(models)
    params = lora.style_parameters("style-a")
    first_b = next(k for k in params if k.endswith("lora_B.weight"))
    cases = [
        ({k: v for k, v in params.items() if k != first_b}, "has no .*lora_B.weight beside it"),
        ({**params, "conv_in.weight": np.zeros((2, 2), np.float32)}, "is not a LoRA matrix"),
        ({k: (v[:, :1] if k == first_b.replace("lora_B", "lora_A") else v) for k, v in params.items()},
         "has rank 1, .* 2"),
    ]
    for p, message in cases:
        a = onnx_adapter.Adapter(1, 1, 1, p, {k: 1 for k in p})
        with pytest.raises(style.StyleError, match=message):
            style.check_adapter(a, slots, "x")


def test_parse_lora_list():
    assert style.parse_lora_list("a.onnx_adapter:0.8, dir/b.onnx_adapter ,c:d.onnx_adapter:-1") == \
        [("a.onnx_adapter", 0.8), ("dir/b.onnx_adapter", 1.0), ("c:d.onnx_adapter", -1.0)]
    assert style.parse_lora_list("") == []


# ---------------------------------------------------------------- prompt weighting

@pytest.mark.parametrize("text,want", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("(unbalanced", 1.0)]),
    ("unbalanced)", [("unbalanced)", 1.0)]),
    ("a [b", [("a [b", 1.0)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (red:1.3) car", [("a ", 1.0), ("red", 1.3), (" car", 1.0)]),
    ("a [[dog]]", [("a ", 1.0), ("dog", 1 / 1.1 / 1.1)]),
    ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
    ("((a:2))", [("a", 2.2)]),
    ("(a (b:0.5)", [("(a ", 1.0), ("b", 0.5)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a (", 1.0), ("house", 1.43), (" ", 1.0), ("on", 1 / 1.1), (" a ", 1.0), ("hill", 0.5), (", sun, ", 1.0),
      ("sky", 1.331), (".", 1.0)]),
    ("a:b (c:1.2.3) d", [("a:b (c:1.2.3) d", 1.0)]),
    ("x:1.5) y", [("x:1.5) y", 1.0)]),
    ("back\\slash \\\\", [("back\\slash \\", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_weights(text, want):
    got = style.parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want])


def tokenizers(models):
    from transformers import CLIPTokenizer

    return [CLIPTokenizer.from_pretrained(str(models / "tiny-sd15" / "tokenizer")),
            CLIPTokenizer.from_pretrained(str(models / "tiny-turbo" / "tokenizer"))]


def test_plain_prompts_tokenize_as_before(models):
    """Without weighting syntax the weighted path gives the tokenizer's own ids and all-1 weights."""
    prompts = [c["prompt"] for c in json.loads((ROOT / "tests/fixtures/tokenizer_ids.json").read_text())["cases"]]
    plain = [p for p in prompts if not any(c in p for c in "()[]\\")]
    assert len(plain) > 80
    for tok in tokenizers(models):
        for p in plain:
            ids, w = style.weighted_tokens(tok, p)
            want = tok(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
            assert ids.tolist() == want, p
            assert (w == 1).all()


def test_weighted_tokens(models):
    for tok in tokenizers(models):
        ids, w = style.weighted_tokens(tok, "a (red:1.3) car, [blurry]")
        want = tok("a red car, blurry", padding="max_length", max_length=77)["input_ids"]
        assert ids.tolist() == want
        red = tok("red", add_special_tokens=False)["input_ids"]
        assert len(red) == 1 and ids[2] == red[0]
        assert w[2] == np.float32(1.3) and w[5] == np.float32(1 / 1.1)
        assert (np.delete(w, [2, 5]) == 1).all()
        long_ids, long_w = style.weighted_tokens(tok, "(word:2) " + "cat " * 100)
        assert long_ids.shape == (77,) and long_ids[-1] == tok.eos_token_id and long_w[1] == 2.0


def test_apply_weights_restores_the_mean():
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((1, 77, 32)) + 0.3).astype(np.float32)
    w = np.ones(77, np.float32)
    assert style.apply_weights(z, w) is z
    w[3:6] = [1.3, 0.5, 2.0]
    out = style.apply_weights(z, w)
    assert out.dtype == np.float32
    assert float(out.mean(dtype=np.float64)) == pytest.approx(float(z.mean(dtype=np.float64)), rel=1e-5)
    ratio = out[0, 10] / z[0, 10]
    np.testing.assert_allclose(out[0, 4] / z[0, 4], ratio * 0.5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 5] / z[0, 5], ratio * 2.0, rtol=1e-5)


# ---------------------------------------------------------------- the reference with styles

def run_ref(model: Path, inputs: Path, out: Path, *extra) -> str:
    argv = ["--model", str(model), "--width", "64", "--height", "64", "--inputs", str(inputs), "--out", str(out),
            "--t-index-list", "30,45", *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = reference_stream.main(argv)
    assert rc == 0, err.getvalue()
    return err.getvalue()


def ref_error(*argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = reference_stream.main(list(argv))
    assert rc == 2
    return err.getvalue()


def frames(d: Path):
    return [np.fromfile(d / f"frame_{k:03d}.f32", dtype="<f4") for k in range(2)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("in")
    for k in range(2):
        picture(64, 64, seed=10 + k).tofile(d / f"frame_{k:03d}.rgb")
    Image.fromarray(picture()).save(d / "style.png")
    Image.fromarray(picture(seed=5)).save(d / "other.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


@pytest.mark.parametrize("name", list(IP))
def test_reference_ipadapter(models, inputs, tmp_path, name):
    m = models / name
    run_ref(m, inputs, tmp_path / "none", "--cfg-type", "full")
    run_ref(m, inputs, tmp_path / "pic", "--cfg-type", "full", "--ip-adapter-image", str(inputs / "style.png"))
    run_ref(m, inputs, tmp_path / "other", "--cfg-type", "full", "--ip-adapter-image", str(inputs / "other.png"))
    run_ref(m, inputs, tmp_path / "zero", "--cfg-type", "self", "--ip-adapter-image", str(inputs / "style.png"),
            "--ip-adapter-scale", "0")
    run_ref(m, inputs, tmp_path / "self", "--cfg-type", "self")
    none, pic, other = frames(tmp_path / "none"), frames(tmp_path / "pic"), frames(tmp_path / "other")
    for a, b, c in zip(none, pic, other):
        assert np.abs(a - b).max() > 1e-3 and np.abs(b - c).max() > 1e-3
    for a, b in zip(frames(tmp_path / "zero"), frames(tmp_path / "self")):
        assert np.array_equal(a, b)  # scale 0 is exactly no picture
    layers = IP[name].layers
    per_layer = ",".join(["1"] + ["0"] * (layers - 1))
    run_ref(m, inputs, tmp_path / "first", "--ip-adapter-image", str(inputs / "style.png"),
            "--ip-adapter-scale", per_layer)
    assert np.abs(frames(tmp_path / "first")[0] - frames(tmp_path / "self")[0]).max() > 1e-4
    assert f"{layers + 2} values for a UNet with {layers}" in ref_error(
        "--model", str(m), "--width", "64", "--height", "64", "--inputs", str(inputs), "--out", str(tmp_path / "x"),
        "--ip-adapter-image", str(inputs / "style.png"), "--ip-adapter-scale", "1,2" + ",3" * layers)
    assert "cannot decode" in ref_error("--model", str(m), "--width", "64", "--height", "64", "--inputs",
                                        str(inputs), "--out", str(tmp_path / "x"), "--ip-adapter-image",
                                        str(inputs / "broken.png"))


def test_reference_lora(models, inputs, tmp_path):
    m = models / lora.NAME
    loras = m / "loras"
    run_ref(m, inputs, tmp_path / "none")
    run_ref(m, inputs, tmp_path / "a", "--lora", f"{loras / 'style-a.onnx_adapter'}:0.8")
    run_ref(m, inputs, tmp_path / "ab", "--lora", f"{loras / 'style-a.onnx_adapter'}:0.8,"
                                                  f"{loras / 'style-b.onnx_adapter'}:0.5")
    run_ref(m, inputs, tmp_path / "zero", "--lora", f"{loras / 'style-a.onnx_adapter'}:0")
    none, a, ab = frames(tmp_path / "none"), frames(tmp_path / "a"), frames(tmp_path / "ab")
    assert np.abs(none[0] - a[0]).max() > 1e-3 and np.abs(a[0] - ab[0]).max() > 1e-3
    assert all(np.array_equal(x, y) for x, y in zip(frames(tmp_path / "zero"), none))
    base = ["--model", str(m), "--width", "64", "--height", "64", "--inputs", str(inputs), "--out",
            str(tmp_path / "x"), "--lora"]
    assert "the UNet has no input of that name" in ref_error(*base, str(loras / "wrong-name.onnx_adapter"))
    assert "cannot read" in ref_error(*base, str(loras / "missing.onnx_adapter"))
    assert "has no LoRA inputs" in ref_error(*base[:-1] + ["--model", str(models / "tiny-sd15"), "--lora"],
                                             str(loras / "style-a.onnx_adapter"))


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
def test_reference_prompt_weighting(models, inputs, tmp_path, name):
    m = models / name
    run_ref(m, inputs, tmp_path / "plain", "--prompt", "a red car")
    run_ref(m, inputs, tmp_path / "off", "--prompt", "a red car", "--prompt-weighting", "0")
    run_ref(m, inputs, tmp_path / "one", "--prompt", "a (red:1) car")
    run_ref(m, inputs, tmp_path / "up", "--prompt", "a (red:1.5) car")
    plain = frames(tmp_path / "plain")
    assert all(np.array_equal(x, y) for x, y in zip(plain, frames(tmp_path / "off")))
    assert all(np.array_equal(x, y) for x, y in zip(plain, frames(tmp_path / "one")))
    assert np.abs(frames(tmp_path / "up")[0] - plain[0]).max() > 1e-4
    # The weighting acts on the hidden states only: SDXL's pooled vector is the unweighted one.
    model = reference_stream.Model(m, 1)
    a, b = model.encode_prompt("a red car"), model.encode_prompt("a (red:1.5) car")
    assert np.abs(a["encoder_hidden_states"] - b["encoder_hidden_states"]).max() > 1e-3
    if "text_embeds" in a:
        assert np.array_equal(a["text_embeds"], b["text_embeds"])
