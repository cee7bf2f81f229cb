"""Checks of the generated models, the fixtures, the noise generator and the numpy reference."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))  # make_models, i2i_models
sys.path.insert(0, str(ROOT / "tests" / "python"))

import i2i_noise  # noqa: E402
import make_models  # noqa: E402
import reference_stream  # noqa: E402

TINY = ["tiny-sd15", "tiny-turbo", "tiny-fp16", "tiny-sdexport"]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """The checkout's models/ when up to date (scripts/setup.sh makes it), else a fresh copy."""
    out = ROOT / "models"
    if make_models.up_to_date(out, make_models.generator_hash()):
        return out
    out = tmp_path_factory.mktemp("models")
    assert make_models.main(["--out", str(out), "--quiet"]) == 0
    return out


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def sig(s: ort.InferenceSession):
    return ([(i.name, i.type, len(i.shape)) for i in s.get_inputs()],
            [(o.name, o.type, len(o.shape)) for o in s.get_outputs()])


# ---------------------------------------------------------------- generator

def test_generator_is_idempotent_and_deterministic(models, tmp_path):
    stamp = make_models.generator_hash()
    assert make_models.up_to_date(models, stamp)
    before = (models / "tiny-sd15" / "unet" / "model.onnx").stat().st_mtime_ns
    assert make_models.main(["--out", str(models), "--quiet"]) == 0
    assert (models / "tiny-sd15" / "unet" / "model.onnx").stat().st_mtime_ns == before
    # Byte-identical when generated again elsewhere.
    fresh = tmp_path / "m"
    assert make_models.main(["--out", str(fresh), "--quiet"]) == 0
    for name in make_models.model_names():
        for f in make_models.expected_files(name):
            assert (fresh / name / f).read_bytes() == (models / name / f).read_bytes(), f"{name}/{f}"


def test_layout(models):
    for name in make_models.model_names():
        d = models / name
        for f in make_models.expected_files(name):
            assert (d / f).is_file(), f"{d / f}"
        if name in (make_models.DEPTH, make_models.STYLE):  # single graphs, no tokenizer
            continue
        tok = d / "tokenizer"
        assert (tok / "tokenizer.json").is_file() or (tok / "vocab.json").is_file()
    assert not (models / "tiny-turbo" / "tokenizer" / "vocab.json").exists()
    assert (models / "tiny-sd15" / "tokenizer" / "merges.txt").is_file()


def test_vocabulary_is_real_clip():
    from i2i_models import clip_vocab

    vocab, merges = clip_vocab.vocab_and_merges(clip_vocab.bpe_gz_bytes(ROOT / ".deps", print))
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab[49406] == "<|startoftext|>" and vocab[49407] == "<|endoftext|>"
    assert vocab[0] == "!" and vocab[256] == "!</w>" and vocab[320] == "a</w>"


SIGNATURES = {
    "tiny-sd15": {
        "text_encoder": ([("input_ids", "tensor(int64)", 2)],
                         [("last_hidden_state", "tensor(float)", 3), ("pooler_output", "tensor(float)", 2)]),
        "unet": ([("sample", "tensor(float)", 4), ("timestep", "tensor(int64)", 1),
                  ("encoder_hidden_states", "tensor(float)", 3)], [("out_sample", "tensor(float)", 4)]),
        "vae_encoder": ([("sample", "tensor(float)", 4)], [("latent_sample", "tensor(float)", 4)]),
        "vae_decoder": ([("latent_sample", "tensor(float)", 4)], [("sample", "tensor(float)", 4)]),
    },
    "tiny-turbo": {
        "unet": ([("sample", "tensor(float)", 4), ("timestep", "tensor(float)", 0),
                  ("encoder_hidden_states", "tensor(float)", 3)], [("out_sample", "tensor(float)", 4)]),
        "vae_encoder": ([("sample", "tensor(float)", 4)], [("latent_parameters", "tensor(float)", 4)]),
    },
    "tiny-fp16": {
        "text_encoder": ([("input_ids", "tensor(int64)", 2)],
                         [("last_hidden_state", "tensor(float16)", 3), ("pooler_output", "tensor(float16)", 2)]),
        "unet": ([("sample", "tensor(float16)", 4), ("timestep", "tensor(float16)", 0),
                  ("encoder_hidden_states", "tensor(float16)", 3)], [("out_sample", "tensor(float16)", 4)]),
        "vae_encoder": ([("sample", "tensor(float16)", 4)], [("latent_sample", "tensor(float16)", 4)]),
        "vae_decoder": ([("latent_sample", "tensor(float16)", 4)], [("sample", "tensor(float16)", 4)]),
    },
    "tiny-sdexport": {
        "text_encoder": ([("input_ids", "tensor(int32)", 2)],
                         [("last_hidden_state", "tensor(float)", 3), ("pooler_output", "tensor(float)", 2)]),
        "unet": ([("sample", "tensor(float)", 4), ("timestep", "tensor(float)", 1),
                  ("encoder_hidden_states", "tensor(float)", 3)], [("latent", "tensor(float)", 4)]),
    },
}


@pytest.mark.parametrize("name", TINY)
def test_signatures(models, name):
    for comp, expected in SIGNATURES[name].items():
        assert sig(session(models / name / comp / "model.onnx")) == expected, f"{name}/{comp}"


def test_configs(models):
    def cfg(name, comp):
        return json.loads((models / name / comp / "config.json").read_text())

    assert cfg("tiny-sd15", "vae_decoder")["scaling_factor"] == 0.18215
    assert cfg("tiny-fp16", "vae_decoder")["_class_name"] == "AutoencoderTiny"
    assert cfg("tiny-fp16", "vae_decoder")["scaling_factor"] == 1.0
    turbo = json.loads((models / "tiny-turbo" / "scheduler" / "scheduler_config.json").read_text())
    assert turbo["_class_name"] == "EulerDiscreteScheduler" and turbo["prediction_type"] == "epsilon"
    stm = json.loads((models / "tiny-turbo" / "tokenizer" / "special_tokens_map.json").read_text())
    assert stm["pad_token"]["content"] == "!"


def _feeds(s: ort.InferenceSession, sample, t, ehs):
    ins = {i.name: i for i in s.get_inputs()}
    fdt = np.float16 if ins["sample"].type == "tensor(float16)" else np.float32
    ts = ins["timestep"]
    tdt = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16}[ts.type]
    tv = np.asarray(t, tdt) if len(ts.shape) == 0 else np.full((sample.shape[0],), t, tdt)
    return {"sample": sample.astype(fdt), "timestep": tv, "encoder_hidden_states": ehs.astype(fdt)}


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_run_sane_and_use_all_inputs(models, name):
    d = models / name
    te, un = session(d / "text_encoder" / "model.onnx"), session(d / "unet" / "model.onnx")
    enc, dec = session(d / "vae_encoder" / "model.onnx"), session(d / "vae_decoder" / "model.onnx")
    idt = np.int32 if name == "tiny-sdexport" else np.int64
    ids_a = np.full((1, 77), 49407, idt)
    ids_a[0, :4] = [49406, 320, 736, 1615]  # "a red car"
    ids_b = ids_a.copy()
    ids_b[0, 2] = 1746  # "a blue car"
    emb_a = te.run(None, {"input_ids": ids_a})[0].astype(np.float32)
    emb_b = te.run(None, {"input_ids": ids_b})[0].astype(np.float32)
    assert emb_a.shape == (1, 77, 32) and np.isfinite(emb_a).all()
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 64, 64))
    fdt = np.float16 if name == "tiny-fp16" else np.float32
    lat = enc.run(None, {"sample": x.astype(fdt)})[0].astype(np.float32)
    assert lat.shape[0] == 2 and lat.shape[2:] == (8, 8) and np.isfinite(lat).all()
    z = lat[:, :4]
    base = un.run(None, _feeds(un, z, 359, np.repeat(emb_a, 2, 0)))[0].astype(np.float32)
    assert base.shape == (2, 4, 8, 8) and np.isfinite(base).all()
    assert 0.05 < float(np.abs(base).mean()) < 5
    for changed in (_feeds(un, z, 99, np.repeat(emb_a, 2, 0)),       # timestep
                    _feeds(un, z, 359, np.repeat(emb_b, 2, 0)),      # prompt
                    _feeds(un, z * 0.5, 359, np.repeat(emb_a, 2, 0))):  # sample
        other = un.run(None, changed)[0].astype(np.float32)
        assert float(np.abs(other - base).max()) > 1e-2
    y = dec.run(None, {"latent_sample": base.astype(fdt)})[0].astype(np.float32)
    assert y.shape == (2, 3, 64, 64) and np.isfinite(y).all()
    assert float(np.abs(y).max()) < 4


# ---------------------------------------------------------------- tokenizer fixture

def test_tokenizer_fixture_matches_transformers(models):
    from transformers import CLIPTokenizer

    data = json.loads((FIXTURES / "tokenizer_ids.json").read_text(encoding="utf-8"))
    assert len(data["cases"]) >= 100
    toks = {name: CLIPTokenizer.from_pretrained(str(models / name / "tokenizer")) for name in data["tokenizers"]}
    assert toks["tiny-sd15"].pad_token_id == 49407 and toks["tiny-turbo"].pad_token_id == 0
    long_ones = 0
    for case in data["cases"]:
        for name, t in toks.items():
            ids = t(case["prompt"], padding="max_length", max_length=77, truncation=True)["input_ids"]
            assert ids == case["ids"][name], f"{name}: {case['prompt']!r}"
            assert len(ids) == 77 and ids[0] == 49406 and 49407 in ids
        long_ones += case["ids"]["tiny-sd15"][76] == 49407 and case["ids"]["tiny-sd15"][75] != 49407
    assert long_ones >= 5  # prompts truncated to 77 with eos kept


def test_slow_and_fast_tokenizer_files_agree(models, tmp_path):
    """vocab.json + merges.txt alone give the same ids as tokenizer.json."""
    from transformers import CLIPTokenizer

    src = models / "tiny-sd15" / "tokenizer"
    for f in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    slow, fast = CLIPTokenizer.from_pretrained(str(tmp_path)), CLIPTokenizer.from_pretrained(str(src))
    data = json.loads((FIXTURES / "tokenizer_ids.json").read_text(encoding="utf-8"))
    for case in data["cases"]:
        p = case["prompt"]
        assert slow(p, padding="max_length", max_length=77, truncation=True)["input_ids"] == case["ids"]["tiny-sd15"]
        assert fast(p)["input_ids"] == slow(p)["input_ids"]


# ---------------------------------------------------------------- scheduler fixture

def test_lcm_fixture_matches_reference_schedule():
    data = json.loads((FIXTURES / "lcm_scheduler.json").read_text())
    abar = reference_stream.alphas_cumprod(data["configs"]["tiny-sd15"])
    assert np.array_equal(abar, np.asarray(data["alphas_cumprod_all"], np.float32))
    assert len(data["cases"]) >= 7
    for case in data["cases"]:
        s = reference_stream.schedule(data["configs"][case["config"]], case["t_index_list"],
                                      case["num_inference_steps"])
        assert s["timesteps"].tolist() == case["timesteps"]
        assert np.array_equal(s["alphas_cumprod"], np.asarray(case["alphas_cumprod"], np.float32))
        for k in ("alpha", "beta", "c_skip", "c_out"):
            # torch's vectorised float32 sqrt may differ from a correctly rounded one by 1 ulp.
            np.testing.assert_allclose(s[k], case[k], rtol=2e-7, atol=0, err_msg=k)
    c = data["cases"][0]
    assert c["t_index_list"] == [32, 45] and c["timesteps"] == [359, 99]
    np.testing.assert_allclose(c["alpha"], [0.7011, 0.9463], atol=1e-4)
    np.testing.assert_allclose(c["beta"], [0.7131, 0.3233], atol=1e-4)


def test_lcm_timesteps_rule():
    assert reference_stream.lcm_timesteps(1000, 50, 50).tolist() == [999 - 20 * j for j in range(50)]
    assert reference_stream.lcm_timesteps(1000, 50, 4).tolist() == [999, 759, 499, 259]
    with pytest.raises(reference_stream.RefError):
        reference_stream.lcm_timesteps(1000, 50, 51)


# ---------------------------------------------------------------- noise

def test_noise_known_splitmix_values():
    # SplitMix64 of seed 0: the first outputs of the reference implementation.
    assert i2i_noise.splitmix64(0, 0, 2).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_noise_statistics():
    g = i2i_noise.normals(2, 1_000_000)
    assert g.dtype == np.float32
    assert abs(float(g.mean())) < 0.005 and abs(float(g.std()) - 1.0) < 0.005
    assert abs(float(np.mean(g.astype(np.float64) ** 3))) < 0.02  # symmetric
    assert abs(float(np.mean(g.astype(np.float64) ** 4)) - 3.0) < 0.05  # normal kurtosis
    u = i2i_noise.uniforms(2, 1_000_000)
    assert u.min() > 0.0 and u.max() < 1.0 and abs(float(u.mean()) - 0.5) < 0.002
    # Neighbouring draws are uncorrelated.
    assert abs(float(np.corrcoef(g[:-1], g[1:])[0, 1])) < 0.005


def test_noise_determinism_seed_and_slot_independence():
    a = i2i_noise.init_noise(7, 3, 8, 8)
    assert np.array_equal(a, i2i_noise.init_noise(7, 3, 8, 8))
    assert not np.array_equal(a, i2i_noise.init_noise(8, 3, 8, 8))
    one, two = i2i_noise.init_noise(7, 1, 8, 8), i2i_noise.init_noise(7, 2, 8, 8)
    assert np.array_equal(one[0], a[0]) and np.array_equal(two[1], a[1])
    assert not np.array_equal(a[0], a[1])
    assert i2i_noise.init_noise(2**64 - 1, 1, 2, 2).shape == (1, 4, 2, 2)
    with pytest.raises(ValueError):
        i2i_noise.normals(2**64, 4)


def test_noise_fixture():
    data = json.loads((FIXTURES / "noise_seeds.json").read_text())
    assert data["filter_seed_xor"] == 0x5EEDF11E5EEDF11E
    for s in data["seeds"]:
        seed = s["seed"]
        assert i2i_noise.splitmix64(seed, 0, 4).tolist() == s["splitmix64"]
        assert i2i_noise.uniforms(seed, 8).tolist() == s["uniforms"]
        g = i2i_noise.normals(seed, 4096)
        assert g[:16].tolist() == s["normals_0_16"] and g[4090:].tolist() == s["normals_4090_4096"]
        assert [i2i_noise.filter_coin(seed, f) for f in range(5)] == s["filter_coins_0_5"]
        assert i2i_noise.filter_coin(seed, 3) == i2i_noise.uniforms(seed ^ 0x5EEDF11E5EEDF11E, 4)[3]


# ---------------------------------------------------------------- reference script

def write_frames(d: Path, n: int, w: int, h: int, seed: int = 0):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        img = np.stack([(xx * 255 // w + 30 * k) % 256, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        img.tofile(d / f"frame_{k:03d}.rgb")


def run_ref(model: Path, inputs: Path, out: Path, *extra, w=64, h=64, subprocess_cli=False):
    """The reference's CLI, in this process (fast) or as its own process."""
    argv = ["--model", str(model), "--width", str(w), "--height", str(h), "--inputs", str(inputs),
            "--out", str(out), *extra]
    if subprocess_cli:
        cmd = [sys.executable, str(ROOT / "tests" / "python" / "reference_stream.py"), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = reference_stream.main(argv)
    return subprocess.CompletedProcess(argv, rc, "", err.getvalue())


def read_out(out: Path, k: int, w=64, h=64) -> np.ndarray:
    return np.fromfile(out / f"frame_{k:03d}.f32", dtype="<f4").reshape(3, h, w)


@pytest.mark.parametrize("name", TINY)
def test_reference_runs_every_variant_and_mode(models, name, tmp_path):
    write_frames(tmp_path / "in", 2, 64, 64)
    outs = {}
    for cfg in ("none", "full", "self", "initialize"):
        r = run_ref(models / name, tmp_path / "in", tmp_path / cfg, "--prompt", "a red car", "--negative-prompt",
                    "blurry", "--seed", "5", "--t-index-list", "20,35,45", "--guidance-scale", "1.5",
                    "--cfg-type", cfg)
        assert r.returncode == 0, r.stderr
        outs[cfg] = [read_out(tmp_path / cfg, k) for k in range(2)]
        for o in outs[cfg]:
            assert np.isfinite(o).all() and o.min() >= 0 and o.max() <= 1
            assert float(((o <= 0) | (o >= 1)).mean()) < 0.2
        assert not np.array_equal(outs[cfg][0], outs[cfg][1])
    for cfg in ("full", "self", "initialize"):
        assert float(np.abs(outs[cfg][0] - outs["none"][0]).max()) > 1e-3, cfg


def test_reference_determinism_and_sensitivity(models, tmp_path):
    m = models / "tiny-sd15"
    write_frames(tmp_path / "in", 1, 64, 64)
    base = ["--prompt", "a red car", "--seed", "5", "--t-index-list", "32,45"]

    def out(tag, *args):
        r = run_ref(m, tmp_path / "in", tmp_path / tag, *args)
        assert r.returncode == 0, r.stderr
        return read_out(tmp_path / tag, 0)

    a = out("a", *base)
    r = run_ref(m, tmp_path / "in", tmp_path / "cli", *base, subprocess_cli=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(a, read_out(tmp_path / "cli", 0))
    assert float(np.abs(a - out("seed", *base[:2], "--seed", "6", *base[4:])).max()) > 1e-3
    assert float(np.abs(a - out("prompt", "--prompt", "a blue house", *base[2:])).max()) > 1e-3
    assert float(np.abs(a - out("strength", *base[:4], "--t-index-list", "20,45")).max()) > 1e-3
    assert float(np.abs(a - out("noadd", *base, "--add-noise", "0")).max()) > 1e-3
    # The dumped intermediates are consistent with the formulas and the output.
    d = out("dump", *base, "--dump", "--cfg-type", "self", "--guidance-scale", "1.5")
    f, c = np.load(tmp_path / "dump" / "frame_000.npz"), np.load(tmp_path / "dump" / "common.npz")
    np.testing.assert_allclose(f["X_0"], c["alpha"][0] * f["z"] + c["beta"][0] * c["noise"][0:1], atol=1e-6)
    np.testing.assert_allclose(f["S_0"], c["noise"][0:1])
    np.testing.assert_allclose(f["eps_0"], 1.5 * f["eps_c_0"] - 0.5 * f["S_0"], atol=1e-5)
    np.testing.assert_allclose(f["X_1"], c["alpha"][1] * f["x0_0"] + c["beta"][1] * c["noise"][1:2], atol=1e-6)
    np.testing.assert_allclose(d, np.clip(f["y"][0] / 2 + 0.5, 0, 1), atol=1e-7)


def test_reference_errors_are_reported(models, tmp_path):
    write_frames(tmp_path / "in", 1, 64, 64)
    r = run_ref(tmp_path / "nope", tmp_path / "in", tmp_path / "o", subprocess_cli=True)
    assert r.returncode != 0 and "not a directory" in r.stderr
    r = run_ref(models / "tiny-sd15", tmp_path / "in", tmp_path / "o", w=32, h=32)
    assert r.returncode != 0 and "frame_000.rgb" in r.stderr and "expected" in r.stderr
    r = run_ref(models / "tiny-sd15", tmp_path / "in", tmp_path / "o", "--t-index-list", "60")
    assert r.returncode != 0 and "t-index" in r.stderr
    r = run_ref(models / "tiny-sd15", tmp_path / "empty", tmp_path / "o")
    assert r.returncode != 0 and "no frame_000.rgb" in r.stderr


# ---------------------------------------------------------------- demo model

def demo_signatures_ok(models):
    d = models / "demo"
    exp = {
        "text_encoder": ([("input_ids", "tensor(int64)", 2)],
                         [("last_hidden_state", "tensor(float)", 3), ("pooler_output", "tensor(float)", 2)]),
        "unet": ([("sample", "tensor(float)", 4), ("timestep", "tensor(int64)", 1),
                  ("encoder_hidden_states", "tensor(float)", 3)], [("out_sample", "tensor(float)", 4)]),
        "vae_encoder": ([("sample", "tensor(float)", 4)], [("latent_sample", "tensor(float)", 4)]),
        "vae_decoder": ([("latent_sample", "tensor(float)", 4)], [("sample", "tensor(float)", 4)]),
    }
    for comp, e in exp.items():
        assert sig(session(d / comp / "model.onnx")) == e, comp
    te = session(d / "text_encoder" / "model.onnx")
    assert te.get_outputs()[0].shape[2] == 768
    assert json.loads((d / "vae_decoder" / "config.json").read_text())["scaling_factor"] == 0.5


def test_demo_signatures(models):
    demo_signatures_ok(models)


def _demo_run(models, tmp_path, tag, w, h, *args):
    from i2i_models.testpicture import landscape

    inp = tmp_path / "demo_in"
    if not inp.exists():
        inp.mkdir()
        landscape(w, h).tofile(inp / "frame_000.rgb")
    r = run_ref(models / "demo", inp, tmp_path / tag, *args, w=w, h=h)
    assert r.returncode == 0, r.stderr
    return read_out(tmp_path / tag, 0, w, h)


def test_demo_reacts_to_prompt_seed_and_strength(models, tmp_path):
    from i2i_models.testpicture import landscape

    w, h = 160, 128  # any multiple of 8
    src = landscape(w, h).astype(np.float32).transpose(2, 0, 1) / 255.0
    def run(tag, *a):
        return _demo_run(models, tmp_path, tag, w, h, "--seed", "2", *a)

    red, blue = run("red", "--prompt", "a red car"), run("blue", "--prompt", "a blue house")
    assert float(red[0].mean() - red[2].mean()) > 0.15  # red dominates blue
    assert float(blue[2].mean() - blue[0].mean()) > 0.15
    gold, empty = run("gold", "--prompt", "gold"), run("empty", "--prompt", "")
    assert float(np.abs(gold - empty).mean()) > 0.05
    other = run("other", "--prompt", "a castle")  # no colour word: a hash colour, still a change
    assert float(np.abs(other - empty).mean()) > 0.01
    seed3 = _demo_run(models, tmp_path, "seed3", w, h, "--seed", "3", "--prompt", "a red car")
    assert 0.005 < float(np.abs(seed3 - red).mean()) < 0.2
    weak = run("weak", "--prompt", "a red car", "--t-index-list", "45")
    strong = run("strong", "--prompt", "a red car", "--t-index-list", "20,45")
    dist = [float(np.abs(o - src).mean()) for o in (weak, red, strong)]
    assert dist[0] < dist[1] < dist[2], dist  # more strength, further from the input
    for o in (red, blue, gold, empty, weak, strong):
        assert float(((o <= 0) | (o >= 1)).mean()) < 0.2  # saturated colours clip one channel at most


def test_demo_batches_and_sizes(models):
    d = models / "demo"
    enc, un, dec = (session(d / c / "model.onnx") for c in ("vae_encoder", "unet", "vae_decoder"))
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 72, 96)).astype(np.float32)
    z = enc.run(None, {"sample": x})[0]
    assert z.shape == (3, 4, 9, 12)
    ehs = np.zeros((3, 77, 768), np.float32)
    eps = un.run(None, {"sample": z * 0.5, "timestep": np.array([999, 359, 99], np.int64),
                        "encoder_hidden_states": ehs})[0]
    assert eps.shape == z.shape and np.isfinite(eps).all()
    one = un.run(None, {"sample": z[1:2] * 0.5, "timestep": np.array([359], np.int64),
                        "encoder_hidden_states": ehs[:1]})[0]
    np.testing.assert_allclose(eps[1:2], one, atol=1e-5)  # batch rows are independent
    y = dec.run(None, {"latent_sample": z})[0]
    assert y.shape == (3, 3, 72, 96) and np.isfinite(y).all()
    # Encode then decode keeps the picture roughly (a pooled, stylised copy).
    assert float(np.abs(np.clip(y, -1, 1) - x).mean()) < 0.7


# ---------------------------------------------------------------- sd-turbo-shaped generator

def test_sdturbo_shaped_builder_small(tmp_path):
    """The sd-turbo-shaped graphs, built at small widths: right signatures, and they run end to end."""
    from i2i_models import sdturbo

    d = tmp_path / "sdt"
    sdturbo.write(d, log=lambda m: None, dims=sdturbo.SMALL)
    exp = {
        "text_encoder": ([("input_ids", "tensor(int64)", 2)],
                         [("last_hidden_state", "tensor(float)", 3), ("pooler_output", "tensor(float)", 2)]),
        "unet": ([("sample", "tensor(float)", 4), ("timestep", "tensor(int64)", 1),
                  ("encoder_hidden_states", "tensor(float)", 3)], [("out_sample", "tensor(float)", 4)]),
        "vae_encoder": ([("sample", "tensor(float)", 4)], [("latent_sample", "tensor(float)", 4)]),
        "vae_decoder": ([("latent_sample", "tensor(float)", 4)], [("sample", "tensor(float)", 4)]),
    }
    for comp, e in exp.items():
        assert sig(session(d / comp / "model.onnx")) == e, comp
    write_frames(tmp_path / "in", 1, 64, 64)
    r = run_ref(d, tmp_path / "in", tmp_path / "out", "--prompt", "a red car", "--cfg-type", "none")
    assert r.returncode == 0, r.stderr
    out = read_out(tmp_path / "out", 0)
    assert np.isfinite(out).all() and float(out.std()) > 1e-3
