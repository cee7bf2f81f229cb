"""Shared pytest fixtures for tests/python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """The generated test models: the checkout's models/ (or models-local/) when up to date, else a fresh copy.
    A test module may define its own `models` fixture; it then takes precedence."""
    import make_models

    for out in (ROOT / "models", ROOT / "models-local"):
        if make_models.up_to_date(out, make_models.generator_hash()):
            return out
    out = tmp_path_factory.mktemp("models")
    assert make_models.main(["--out", str(out), "--quiet"]) == 0
    return out
