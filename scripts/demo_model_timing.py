#!/usr/bin/env python3
"""Per-frame CPU cost of a model's graphs in ONNX Runtime (Python): VAE encode + n UNet evaluations +
VAE decode at W x H, batch 1, on the test picture.

    python scripts/demo_model_timing.py [--model models/demo] [--size 512] [--threads 1] [--frames 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from i2i_models.testpicture import landscape  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=HERE.parent / "models" / "demo")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--unet-evals", type=int, default=2)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = {c: ort.InferenceSession(str(args.model / c / "model.onnx"), so, providers=["CPUExecutionProvider"])
            for c in ("text_encoder", "unet", "vae_encoder", "vae_decoder")}
    S = args.size
    x = (landscape(S, S).astype(np.float32) / 255.0 * 2 - 1).transpose(2, 0, 1)[None].copy()
    ids = np.full((1, 77), 49407, np.int64)
    ids[0, :3] = [49406, 736, 1615]
    ehs = sess["text_encoder"].run(["last_hidden_state"], {"input_ids": ids})[0]
    t = {"vae_encoder": 0.0, "unet": 0.0, "vae_decoder": 0.0}
    for k in range(args.frames + 5):
        t0 = time.perf_counter()
        z = sess["vae_encoder"].run(None, {"sample": x})[0][:, :4]
        t1 = time.perf_counter()
        for ts in (359, 99)[: args.unet_evals] if args.unet_evals <= 2 else [359] * args.unet_evals:
            eps = sess["unet"].run(None, {"sample": z, "timestep": np.array([ts], np.int64),
                                          "encoder_hidden_states": ehs})[0]
        t2 = time.perf_counter()
        sess["vae_decoder"].run(None, {"latent_sample": eps})
        t3 = time.perf_counter()
        if k >= 5:  # warm-up excluded
            t["vae_encoder"] += t1 - t0
            t["unet"] += t2 - t1
            t["vae_decoder"] += t3 - t2
    n = args.frames
    total = sum(t.values()) / n * 1e3
    print(f"{args.model} {S}x{S}, {args.threads} thread(s), {n} frames, onnxruntime {ort.__version__}")
    print(f"  vae_encoder {t['vae_encoder'] / n * 1e3:7.2f} ms")
    print(f"  unet x{args.unet_evals}     {t['unet'] / n * 1e3:7.2f} ms")
    print(f"  vae_decoder {t['vae_decoder'] / n * 1e3:7.2f} ms")
    print(f"  per frame   {total:7.2f} ms  ({1e3 / total:.1f} frames/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
