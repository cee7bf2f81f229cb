#!/usr/bin/env python3
"""Generate the demo and test models in the diffusers / optimum ONNX layout.

    python scripts/make_models.py --out models [--quiet] [--force]
    python scripts/make_models.py --sdturbo-shaped DIR     # large random sd-turbo-shaped model (GPU benchmark)
    python scripts/make_models.py --sdxl-turbo-shaped DIR  # large random sdxl-turbo-shaped model (GPU benchmark)
    python scripts/make_models.py --style DIR              # only the onnxtransform models (style-tiny) into DIR

Deterministic: the same generator and package versions give byte-identical files. Skips all work
when OUT/.stamp holds the hash of the generator sources and every expected file exists.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from i2i_models import clip_vocab, configs, ipadapter, lora, sdxl, style, tiny  # noqa: E402
from i2i_models.graph import save  # noqa: E402

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# The onnxtransform models (one ONNX file each, not the diffusers layout).
STYLE = "style-tiny"


def _ort_version() -> str:
    """ONNX Runtime writes the LoRA adapter files (tiny-lora/loras/)."""
    try:
        import onnxruntime
    except ImportError:
        return "none"
    return onnxruntime.__version__


def generator_hash() -> str:
    h = hashlib.sha256()
    for p in sorted([HERE / "make_models.py", *(HERE / "i2i_models").glob("*.py")]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(clip_vocab.BPE_GZ_SHA256.encode())
    h.update(f"onnx={onnx.__version__} numpy={np.__version__} onnxruntime={_ort_version()}".encode())
    return h.hexdigest()[:24]


DEPTH = "tiny-depth"  # an image-to-depth graph for the depth ControlNet preprocessor: tiny-depth/model.onnx


def expected_files(name: str) -> list[str]:
    if name == DEPTH:
        return ["model.onnx"]
    if name == STYLE:
        return style.expected_files()
    ip = next((v for v in ipadapter.VARIANTS if v.name == name), None)
    if ip is not None:
        base = sdxl.expected_files(ip.base_sdxl()) if ip.xl else sd_files()
        return base + ipadapter.EXTRA_FILES
    if name == lora.NAME:
        return sd_files() + lora.expected_files()
    xl = next((v for v in sdxl.VARIANTS if v.name == name), None)
    if xl is not None:
        return sdxl.expected_files(xl)
    return sd_files()


def sd_files() -> list[str]:
    """The files of a tiny SD 1.x / 2.x model folder."""
    files = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/special_tokens_map.json",
             "tokenizer/tokenizer_config.json"]
    files += [f"{c}/{f}" for c in COMPONENTS for f in ("model.onnx", "config.json")]
    return files


def write_tiny(dest: Path, v: tiny.Variant, vocab, merges, tok_cache) -> None:
    dtype_name = "float16" if v.dtype == np.float16 else "float32"
    clip_vocab.write_tokenizer(dest / "tokenizer", vocab, merges, pad=v.pad, files=v.tokenizer_files,
                               cache=tok_cache)
    vae_class = "AutoencoderTiny" if v.vae_kind == "tiny" else "AutoencoderKL"
    sched_class = {"pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler", "lcm": "LCMScheduler"}[v.scheduler]
    (dest / "model_index.json").write_text(configs.model_index(sched_class, vae_class))
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler/scheduler_config.json").write_text(configs.scheduler_config(v.scheduler))
    graphs = {
        "text_encoder": tiny.text_encoder(v),
        "unet": tiny.unet(v),
        "vae_encoder": tiny.vae_encoder(v),
        "vae_decoder": tiny.vae_decoder(v),
    }
    if v.vae_kind == "tiny":
        vae_cfg = configs.vae_tiny_config(tiny.C_VAE)
    else:
        vae_cfg = configs.vae_kl_config(v.scaling_factor, 64, [tiny.C_VAE] * 4)
    cfgs = {
        "text_encoder": configs.text_encoder_config(tiny.E_TINY, 1, 1, 2 * tiny.E_TINY, dtype_name),
        "unet": configs.unet_config(tiny.E_TINY, 8, [tiny.C_UNET], 8),
        "vae_encoder": vae_cfg,
        "vae_decoder": vae_cfg,
    }
    for comp, g in graphs.items():
        (dest / comp).mkdir(parents=True, exist_ok=True)
        save(g.model(f"{v.name} {comp}: random weights, for tests"), dest / comp / "model.onnx")
        (dest / comp / "config.json").write_text(cfgs[comp])


def build_all(out: Path, log) -> None:
    gz = clip_vocab.bpe_gz_bytes(ROOT / ".deps", log)
    vocab, merges = clip_vocab.vocab_and_merges(gz)
    tok_cache: dict = {}
    builders = [(v.name, lambda d, v=v: write_tiny(d, v, vocab, merges, tok_cache))
                for v in tiny.VARIANTS + tiny.CONTROLNET_VARIANTS]
    builders.append((DEPTH, lambda d: save(tiny.depth_model().model("tiny depth model: random weights, for tests"),
                                           d / "model.onnx")))
    builders += [(v.name, lambda d, v=v: sdxl.write(d, v, vocab, merges, tok_cache)) for v in sdxl.VARIANTS]
    builders.append((STYLE, style.write))
    for v in ipadapter.VARIANTS:  # the base folder first, then the IP-Adapter parts
        base = (lambda d, v=v: sdxl.write(d, v.base_sdxl(), vocab, merges, tok_cache)) if v.xl else \
            (lambda d, v=v: write_tiny(d, v.base_tiny(), vocab, merges, tok_cache))
        builders.append((v.name, lambda d, v=v, base=base: (base(d), ipadapter.write(d, v))))
    builders.append((lora.NAME, lambda d: (write_tiny(d, lora.VARIANT.base_tiny(), vocab, merges, tok_cache),
                                           lora.write(d))))
    try:
        from i2i_models import demo
    except ImportError:
        demo = None
    if demo is not None:
        builders.insert(0, ("demo", lambda d: demo.write_demo(d, vocab, merges, tok_cache)))
    for name, build in builders:
        t0 = time.monotonic()
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        final = out / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        log(f"wrote {final} ({time.monotonic() - t0:.1f} s)")


def model_names() -> list[str]:
    names = [v.name for v in tiny.VARIANTS + tiny.CONTROLNET_VARIANTS] + [v.name for v in sdxl.VARIANTS] + [STYLE, DEPTH]
    names += [v.name for v in ipadapter.VARIANTS] + [lora.NAME]
    if (HERE / "i2i_models" / "demo.py").exists():
        names.insert(0, "demo")
    return names


def up_to_date(out: Path, stamp: str) -> bool:
    sf = out / ".stamp"
    if not sf.exists() or sf.read_text().strip() != stamp:
        return False
    return all((out / n / f).is_file() for n in model_names() for f in expected_files(n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="output folder (default: models)")
    ap.add_argument("--quiet", action="store_true", help="print nothing unless something is generated or fails")
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    ap.add_argument("--sdturbo-shaped", type=Path, metavar="DIR",
                    help="write a random-weight model with sd-turbo's architecture sizes to DIR and exit")
    ap.add_argument("--sdxl-turbo-shaped", type=Path, metavar="DIR",
                    help="write a random-weight model with sdxl-turbo's architecture sizes to DIR and exit "
                         "(about 14 GB; needs about 12 GB of free memory)")
    ap.add_argument("--style", type=Path, metavar="DIR",
                    help="write only the onnxtransform models (style-tiny) to DIR and exit")
    args = ap.parse_args(argv)

    def log(msg):
        print(f"[make_models] {msg}", file=sys.stderr, flush=True)

    try:
        if args.style is not None:
            style.write(args.style)
            log(f"wrote {args.style}")
            return 0
        if args.sdturbo_shaped is not None:
            from i2i_models import sdturbo
            sdturbo.write(args.sdturbo_shaped, log)
            return 0
        if args.sdxl_turbo_shaped is not None:
            from i2i_models import sdxlturbo
            sdxlturbo.write(args.sdxl_turbo_shaped, log)
            return 0
        out = args.out
        stamp = generator_hash()
        if not args.force and up_to_date(out, stamp):
            if not args.quiet:
                log(f"{out}: up to date")
            return 0
        out.mkdir(parents=True, exist_ok=True)
        (out / ".stamp").unlink(missing_ok=True)
        build_all(out, log)
        (out / ".stamp").write_text(stamp + "\n")
        return 0
    except Exception as e:  # a message for people, not a traceback
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
