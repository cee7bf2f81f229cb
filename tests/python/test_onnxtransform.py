"""onnxtransform in real pipelines (gst-launch-1.0) against an onnxruntime-python run of the
same model on the same frames: every layout and element type of the style-tiny models, batching,
a fixed-size model fed another size, a 1-channel 2x super-resolution model, and the models the
element must refuse.

The frames go in as raw RGB through filesrc ! rawvideoparse and come out as raw RGB through
filesink, so both sides see the same bytes. The reference applies the element's documented
mapping: x = (p * scale - mean) / std in float32, the model, then p = floor((y * std + mean) /
scale + 0.5) clamped to 0..255 (uint8 tensors as they are).

Models: STYLE_MODELS (a folder written by `scripts/make_models.py --style DIR`), else
models/style-tiny.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from i2i_web_helpers import ROOT, env

MODELS = Path(os.environ.get("STYLE_MODELS", ROOT / "models" / "style-tiny"))
W, H, FRAMES = 40, 24, 5


def models() -> Path:
    if not (MODELS / "model.onnx").is_file():
        pytest.fail(f"{MODELS} is missing: run scripts/setup.sh or "
                    f".venv/bin/python scripts/make_models.py --style {MODELS}")
    return MODELS


def frames(n: int = FRAMES, w: int = W, h: int = H) -> np.ndarray:
    """Distinct, structured RGB frames (gradients and a moving square)."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (x * 255 // max(w - 1, 1) + 17 * i) % 256
        out[i, ..., 1] = (y * 255 // max(h - 1, 1) + 5 * i) % 256
        out[i, ..., 2] = ((x + y) * 3 + 40 * i) % 256
        out[i, 4 + i:10 + i, 6 + 2 * i:14 + 2 * i] = (250, 20, 120)
    return out


def run_element(tmp: Path, model: Path, rgb: np.ndarray, props: str = "", out_size=None):
    """Pushes `rgb` (n, h, w, 3) through onnxtransform; returns (returncode, output frames, log)."""
    launch = shutil.which("gst-launch-1.0")
    assert launch, "gst-launch-1.0 is missing (scripts/setup.sh installs it)"
    n, h, w, _ = rgb.shape
    src = tmp / "in.rgb"
    dst = tmp / "out.rgb"
    src.write_bytes(rgb.tobytes())
    dst.unlink(missing_ok=True)
    desc = (f"filesrc location={src} blocksize={w * h * 3} ! "
            f"rawvideoparse format=rgb width={w} height={h} framerate=10/1 ! "
            f"onnxtransform model={model} threads=1 {props} ! video/x-raw,format=RGB ! "
            f"filesink location={dst}")
    p = subprocess.run([launch, "-m", *desc.split()], env=env(), capture_output=True, text=True, timeout=120)
    log = p.stdout + p.stderr
    if p.returncode != 0:
        return p.returncode, None, log
    ow, oh = out_size or (w, h)
    data = np.frombuffer(dst.read_bytes(), np.uint8)
    assert data.size == n * oh * ow * 3, f"{data.size} bytes out for {n} frames of {ow}x{oh}\n{log}"
    return 0, data.reshape(n, oh, ow, 3), log


def reference(model: Path, rgb: np.ndarray, norm: dict | None = None, batch: int | None = None) -> np.ndarray:
    """The same model and frames in onnxruntime-python, with the element's pixel mapping."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    side = model.with_suffix(".json")
    cfg = dict(json.loads(side.read_text())) if side.exists() else {}
    cfg.update(norm or {})
    f32 = np.float32
    scale = f32(cfg.get("scale", 1 / 255))
    mean = np.broadcast_to(np.asarray(cfg.get("mean", 0.0), f32), (3,))
    std = np.broadcast_to(np.asarray(cfg.get("std", 1.0), f32), (3,))
    bgr = cfg.get("channel-order") == "bgr"
    nhwc = inp.shape[3] in (1, 3) and inp.shape[1] not in (1, 3)
    gray = 1 in (inp.shape[1], inp.shape[3])
    ty = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}[inp.type]
    px = rgb
    if gray:
        r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
        px = ((77 * r + 150 * g + 29 * b + 128) >> 8).astype(np.uint8)[..., None]
    elif bgr:
        px = rgb[..., ::-1]
    c = px.shape[-1]
    if ty == np.uint8:
        x = px
    else:
        x = ((px.astype(f32) * scale - mean[:c]) / std[:c]).astype(ty)
    if not nhwc:
        x = x.transpose(0, 3, 1, 2)
    step = batch or len(x)
    ys = [sess.run([out.name], {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    y = np.concatenate(ys)
    if not nhwc:
        y = y.transpose(0, 2, 3, 1)
    if y.dtype == np.uint8:
        p = y
    else:
        v = ((y.astype(f32) * std[:c] + mean[:c]) / scale).astype(f32)
        p = np.clip(np.floor(v.astype(np.float64) + 0.5), 0, 255).astype(np.uint8)
    if c == 1:
        p = np.repeat(p, 3, axis=-1)
    elif bgr:
        p = p[..., ::-1]
    return p


@pytest.mark.parametrize("name", ["model.onnx", "nhwc-uint8.onnx", "fp16-bgr.onnx"])
def test_output_equals_onnxruntime_python(tmp_path, name):
    model = models() / name
    rgb = frames()
    rc, got, log = run_element(tmp_path, model, rgb)
    assert rc == 0, log
    want = reference(model, rgb)
    diff = np.abs(got.astype(int) - want.astype(int))
    # Same library, same tensors: equal, except float16 rounding at an exact .5 boundary.
    assert diff.max() <= (1 if "fp16" in name else 0), f"max diff {diff.max()} at {np.argwhere(diff).tolist()[:5]}"
    # The style is visible: the output is not the input.
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() > 10


def test_batches_give_the_same_pictures(tmp_path):
    model = models() / "model.onnx"
    rgb = frames(7)
    rc, got, log = run_element(tmp_path, model, rgb, "batch-size=3")
    assert rc == 0, log
    assert "batches=(guint64)3" in log, log
    np.testing.assert_array_equal(got, reference(model, rgb, batch=3))


def test_properties_override_model_json(tmp_path):
    model = models() / "model.onnx"
    rgb = frames()
    # model.json says scale 1 (pixels 0..255); the property maps pixels to 0..2 instead, and the
    # output back with the inverse.
    rc, got, log = run_element(tmp_path, model, rgb, "scale=0.0078431372549 mean=0.1,0.2,0.3 std=0.5")
    assert rc == 0, log
    want = reference(model, rgb, {"scale": 0.0078431372549, "mean": [0.1, 0.2, 0.3], "std": 0.5})
    np.testing.assert_array_equal(got, want)


def test_fixed_size_model_takes_any_input_size(tmp_path):
    model = models() / "fixed-64x48.onnx"
    rgb = frames(3, 64, 48)
    rc, got, log = run_element(tmp_path, model, rgb)
    assert rc == 0, log
    np.testing.assert_array_equal(got, reference(model, rgb, batch=1))
    # Another input size is scaled to the model's 64x48, and the output is 64x48.
    rc, got, log = run_element(tmp_path, model, frames(2, 80, 40), out_size=(64, 48))
    assert rc == 0, log
    assert got.shape == (2, 48, 64, 3)


def test_one_channel_super_resolution_doubles_the_size(tmp_path):
    model = models() / "sr2x-gray.onnx"
    rgb = frames(3)
    rc, got, log = run_element(tmp_path, model, rgb, out_size=(2 * W, 2 * H))
    assert rc == 0, log
    np.testing.assert_array_equal(got, reference(model, rgb, batch=1))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


@pytest.mark.parametrize("name,tensor,expected,found", [
    ("bad-two-inputs.onnx", "a, b", "exactly one input", "2 inputs"),
    ("bad-not-image.onnx", "features", "rank 4", "[1, 10]"),
    ("bad-int64.onnx", "ids", "float32, float16 or uint8", "i64"),
])
def test_wrong_models_are_refused_with_what_and_where(tmp_path, name, tensor, expected, found):
    model = models() / name
    rc, _, log = run_element(tmp_path, model, frames(2))
    assert rc != 0
    # The error message itself (not only the debug text) names the file, tensor, expected and found.
    line = next((ln for ln in log.splitlines() if "Could not load the model" in ln), "")
    for part in (name, f"'{tensor}'", expected, found):
        assert part in line, f"{part!r} not in {line!r}\n{log}"


def test_missing_model_and_bad_json_are_named(tmp_path):
    rc, _, log = run_element(tmp_path, tmp_path / "nowhere.onnx", frames(1))
    assert rc != 0 and "nowhere.onnx" in log, log
    model = tmp_path / "m.onnx"
    shutil.copy(models() / "model.onnx", model)
    model.with_suffix(".json").write_text('{"channel-order": "rbg"}')
    rc, _, log = run_element(tmp_path, model, frames(1))
    assert rc != 0, log
    line = next((ln for ln in log.splitlines() if "Could not load the model" in ln), "")
    assert "m.json" in line and "channel-order" in line and "rbg" in line, log
