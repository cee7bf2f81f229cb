"""The tiny ControlNet models (scripts/i2i_models/tiny.py, sdxl.py): the fused layouts of ONNX Runtime's demo and
diffusers' export, and every ControlNet input changing the UNet's output."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from i2i_models import sdxl, tiny  # noqa: E402

CN = [v.name for v in tiny.CONTROLNET_VARIANTS] + [v.name for v in sdxl.VARIANTS if v.controlnets]


def session(path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", CN)
def test_controlnet_inputs_change_the_output(models, name):
    s = session(models / name / "unet" / "model.onnx")
    ins = {i.name: i for i in s.get_inputs()}
    names = [n for n in ins if n in ("controlnet_images", "controlnet_conds")]
    scales = [n for n in ins if n in ("controlnet_scales", "conditioning_scales")]
    assert len(names) == 1 and len(scales) == 1, sorted(ins)
    img, sc = names[0], scales[0]
    num = ins[img].shape[0]
    assert isinstance(num, int) and num >= 1, "the ControlNet count is fixed in the graph"
    rng = np.random.default_rng(0)
    hidden = ins["encoder_hidden_states"].shape[2]
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.full(ins["timestep"].shape, 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, hidden)).astype(np.float32),
        img: rng.random((num, 2, 3, 64, 64)).astype(np.float32),
        sc: np.ones(ins[sc].shape, dtype=np.float32),
    }
    if "text_embeds" in ins:
        feeds["text_embeds"] = rng.standard_normal((2, sdxl.POOLED)).astype(np.float32)
        feeds["time_ids"] = np.asarray([[64, 64, 0, 0, 64, 64]] * 2, dtype=np.float32)
    base = s.run(None, feeds)[0]
    for k in range(num):
        f = dict(feeds)
        f[img] = feeds[img].copy()
        f[img][k] = 0
        assert np.abs(s.run(None, f)[0] - base).max() > 1e-3, f"image {k}"
        f = dict(feeds)
        f[sc] = feeds[sc].copy()
        f[sc].reshape(-1)[k] = 0
        off = s.run(None, f)[0]
        assert np.abs(off - base).max() > 1e-3, f"scale {k}"
        # Scale 0: the image of that ControlNet no longer matters.
        f[img] = feeds[img].copy()
        f[img][k] = 0
        assert np.array_equal(s.run(None, f)[0], off), f"scale {k} = 0 turns it off"
