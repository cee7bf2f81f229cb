"""The peer environment `.venv-peer`: PyTorch, diffusers, optimum and the `streamdiffusion` package, for the
StreamDiffusion comparison (tests/python/peer_bench.py) and the real-export fixtures
(scripts/fixtures/make_real_exports.py). Kept apart from the test venv so that the tests never need torch.

`ensure()` makes it on first use (about 4 GB: PyPI's torch wheel brings its CUDA libraries) from
tests/python/peer_requirements.txt, then installs `streamdiffusion` without its pins (it pins
diffusers==0.24.0, which no longer imports beside a current huggingface-hub; its pipeline runs on the
diffusers in the requirements). `reexec_in_peer_venv()` restarts the calling script under that Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-peer"
REQUIREMENTS = ROOT / "tests" / "python" / "peer_requirements.txt"
STREAMDIFFUSION = "streamdiffusion==0.1.1"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".i2i-peer-stamp"


def _stamp() -> str:
    return REQUIREMENTS.read_text() + STREAMDIFFUSION


def ensure(log=print) -> Path:
    """The peer venv's python, made or brought up to date first."""
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == _stamp():
        return PYTHON
    log(f"making {VENV} (PyTorch, diffusers, optimum, streamdiffusion; about 4 GB, once)")
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", STREAMDIFFUSION], check=True)
    STAMP.write_text(_stamp())
    return PYTHON


def in_peer_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def reexec_in_peer_venv(log=print) -> None:
    """Runs the current script again under the peer venv's python unless it already runs there."""
    if in_peer_venv():
        return
    python = ensure(log)
    os.execv(str(python), [str(python), *sys.argv])
