"""scripts/export_ipadapter.py and scripts/export_lora.py on tiny diffusers-built models with random weights,
compared with diffusers in PyTorch to 1e-4 (tests/python/style_export_check.py).

They need PyTorch, diffusers, optimum and peft, which the test environment (.venv) never holds: they run under
.venv-peer/bin/python and are skipped where it is absent (CI). About 30 s per case on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / ".venv-peer" / "bin" / "python"
CHECK = ROOT / "tests" / "python" / "style_export_check.py"


def _peer_ready() -> str | None:
    if not PEER.exists():
        return f"{PEER} is absent (the PyTorch environment; the exporters need it)"
    res = subprocess.run([str(PEER), "-c", "import torch, diffusers, transformers, optimum, peft, onnxruntime"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return f"{PEER} lacks a package the exporters need: {res.stderr.strip().splitlines()[-1:]}"
    return None


REASON = _peer_ready()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.mark.parametrize("case", ["ipadapter-sd", "ipadapter-plus-sd", "ipadapter-sdxl", "lora-sd", "lora-sdxl",
                                  "lora-ipadapter-sd"])
def test_export_matches_diffusers(case, tmp_path):
    res = subprocess.run([str(PEER), str(CHECK), case, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-6000:]}"
    diff = json.loads(res.stdout.strip().splitlines()[-1])
    for k, v in diff.items():
        if k.startswith("effect_"):
            assert v > 1e-3, (k, diff)
        else:
            assert v <= 1e-4, (k, diff)


def test_exporters_refuse_bad_inputs(tmp_path):
    """Wrong or missing files give one line naming the file and the fix, exit status 1, no traceback."""
    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    (base / "unet" / "config.json").write_text("{}")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    ip = ["export_ipadapter.py", "--base", base, "--ip-adapter"]
    lo = ["export_lora.py", "--base", base, "--lora"]
    cases = [
        (ip + [tmp_path / "missing.bin", "--image-encoder", tmp_path, "--out", tmp_path / "o"], "missing.bin: no such"),
        (ip + [tmp_path / "used" / "x", "--image-encoder", tmp_path, "--out", tmp_path / "o"],
         "no config.json (expected the IP-Adapter's CLIP image encoder folder"),
        (lo + [tmp_path / "used" / "x", "--out", tmp_path / "used"], "used: exists and is not an empty folder"),
        (["export_lora.py", "--base", tmp_path, "--lora", tmp_path / "used" / "x", "--out", tmp_path / "o"],
         "no unet/config.json"),
        (lo + [tmp_path / "used" / "x", "--ip-adapter", tmp_path / "used" / "x", "--out", tmp_path / "o"],
         "--ip-adapter and --image-encoder go together"),
    ]
    for argv, message in cases:
        res = subprocess.run([str(PEER), str(ROOT / "scripts" / argv[0]), *map(str, argv[1:])], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 1, res.stderr
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "o").exists()
