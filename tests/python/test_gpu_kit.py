"""scripts/gpu-kit.sh pack / unpack on the CPU with real files: the ONNX Runtime library of the test venv's
onnxruntime wheel, the built i2i plugin, numpy and onnx wheels from PyPI. Chunk sizes, the manifest, the
reassembled kit (its plugin and library run a real pipeline), and damaged or missing chunks refused by name."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import onnxruntime
import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "gpu-kit.sh"
ORT_DIR = Path(onnxruntime.__file__).parent / "capi"
PLUGIN = ROOT / "target" / "release" / "libgsti2i.so"
CHUNK_MIB = 8


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(KIT), *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} is missing: run scripts/setup.sh (it builds the plugins)")
    tmp = tmp_path_factory.mktemp("kit")
    target = tmp / "target"
    target.mkdir()
    shutil.copy(PLUGIN, target)  # only the i2i plugin: keeps the test's payload small
    out = tmp / "packed"
    r = run("pack", "--out", out, "--max-chunk-mb", CHUNK_MIB, "--ort-lib-dir", ORT_DIR, "--no-cuda", "--no-build",
            "--target-dir", target)
    assert r.returncode == 0, r.stderr
    return out


def manifest(out: Path) -> list[list[str]]:
    return [line.split(" ") for line in (out / "MANIFEST").read_text().splitlines()]


def test_chunks_and_manifest(kit):
    m = manifest(kit)
    assert m[0] == ["i2i-gpu-kit", "1"]
    chunks = [e for e in m if e[0] == "chunk"]
    payload = next(e for e in m if e[0] == "payload")
    total = int(payload[2])
    limit = CHUNK_MIB * 1024 * 1024
    assert len(chunks) == -(-total // limit) and len(chunks) >= 3
    for _, name, size, digest in chunks:
        p = kit / name
        assert p.stat().st_size == int(size) <= limit and sha(p) == digest
    assert sum(int(c[2]) for c in chunks) == total
    files = {e[1]: e for e in m if e[0] == "file"}
    lib = next(ORT_DIR.glob("libonnxruntime.so.*"))
    assert files[f"lib/{lib.name}"][3] == sha(lib)
    assert files["plugins/libgsti2i.so"][3] == sha(PLUGIN)
    assert any(f.startswith("wheels/numpy-") for f in files) and any(f.startswith("wheels/onnx-") for f in files)
    assert "scripts/make_models.py" in files and "scripts/gpu-bench.sh" in files
    assert ".deps/clip/bpe_simple_vocab_16e6.txt.gz" in files
    assert ["ort-dylib", f"lib/{lib.name}"] in m
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=kit, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr


def test_unpack_gives_working_exports(kit, tmp_path):
    dest = tmp_path / "unpacked"
    r = run("unpack", kit, "--to", dest)
    assert r.returncode == 0, r.stderr
    exports = dict(line[len("export "):].split("=", 1) for line in r.stdout.splitlines())
    assert set(exports) == {"ORT_DYLIB_PATH", "LD_LIBRARY_PATH", "GST_PLUGIN_PATH", "PATH", "I2I_KIT"}
    lib = Path(exports["ORT_DYLIB_PATH"])
    assert lib.parent == dest / "lib" and sha(lib) == sha(next(ORT_DIR.glob("libonnxruntime.so.*")))
    # The kit's plugin on the kit's ONNX Runtime runs a real export (tests/fixtures/real-exports/sd15).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GST_")}
    env.update(HOME=str(tmp_path), ORT_DYLIB_PATH=str(lib), GST_PLUGIN_PATH=str(dest / "plugins"),
               GST_REGISTRY=str(tmp_path / "registry.bin"))
    model = ROOT / "tests" / "fixtures" / "real-exports" / "sd15"
    p = subprocess.run(["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=2", "!",
                        "video/x-raw,width=64,height=64", "!", "i2itransform", f"model={model}", "width=64",
                        "height=64", "execution-provider=cpu", "threads=1", "!", "fakesink"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_damaged_or_missing_chunk_is_refused_by_name(kit, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(kit, bad)
    chunk = bad / "kit.tar.gz.001"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = run("unpack", bad, "--to", tmp_path / "out")
    assert r.returncode == 1 and "kit.tar.gz.001" in r.stderr and "SHA-256" in r.stderr, r.stderr
    assert not r.stdout and not (tmp_path / "out").exists()
    chunk.unlink()
    r = run("unpack", bad)
    assert r.returncode == 1 and "chunk kit.tar.gz.001 is missing" in r.stderr, r.stderr
    (bad / "kit.tar.gz.002").write_bytes(b"short")
    r = run("unpack", bad)
    assert r.returncode == 1 and "kit.tar.gz.002 has 5 bytes" in r.stderr, r.stderr


def test_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run("pack", "--out", tmp_path / "full", "--no-build")
    assert r.returncode == 1 and "not empty" in r.stderr
    r = run("pack", "--out", tmp_path / "o", "--max-chunk-mb", "0")
    assert r.returncode == 1 and "--max-chunk-mb" in r.stderr
    r = run("unpack", tmp_path)
    assert r.returncode == 1 and "MANIFEST" in r.stderr
