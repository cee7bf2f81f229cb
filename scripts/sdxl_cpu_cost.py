#!/usr/bin/env python3
"""CPU cost of one sdxl-turbo-shaped graph call (real layer sizes, random weights), for hardware planning.

    python scripts/sdxl_cpu_cost.py --part vae_decoder|unet [--size 512] [--threads 1] [--runs 3]

Builds only the graph asked for (the SDXL VAE decoder, 49 M parameters, 200 MB; or the UNet, 2.6 B
parameters, 10 GB of float32 weights, refused unless --big is given: making and loading it needs about
12 GB of free memory each) into a temporary folder, then times `--runs` calls of ONNX Runtime on the CPU at
`--size` x `--size` (batch 1) after one warm-up call, and prints each time in seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from i2i_models import sdturbo, sdxlturbo  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("vae_decoder", "unet"), required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="allow the 10 GB UNet")
    args = ap.parse_args(argv)
    if args.part == "unet" and not args.big:
        print("sdxl_cpu_cost: the UNet has 2.6 B parameters (10 GB); pass --big on a machine with 24 GB free",
              file=sys.stderr)
        return 2
    d = sdxlturbo.SDXL_TURBO
    tmp = Path(tempfile.mkdtemp(prefix="sdxl-cpu-cost-"))
    try:
        t0 = time.monotonic()
        if args.part == "unet":
            net = sdxlturbo.unet(d)
        else:
            net = sdturbo.vae_decoder(sdxlturbo._sd(d, d.e1))
        sdturbo._save(net, tmp / args.part, f"sdxl-turbo-shaped {args.part}, for timing")
        params = net.params
        del net
        print(f"{args.part}: {params / 1e6:.0f} M parameters, built in {time.monotonic() - t0:.0f} s", flush=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(str(tmp / args.part / "model.onnx"), so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        lat = args.size // 8
        if args.part == "unet":
            feeds = {
                "sample": rng.standard_normal((1, 4, lat, lat)).astype(np.float32),
                "timestep": np.asarray(999.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((1, 77, d.e1 + d.e2)).astype(np.float32),
                "text_embeds": rng.standard_normal((1, d.pooled)).astype(np.float32),
                "time_ids": np.asarray([[args.size, args.size, 0, 0, args.size, args.size]], np.float32),
            }
        else:
            feeds = {"latent_sample": rng.standard_normal((1, 4, lat, lat)).astype(np.float32)}
        s.run(None, feeds)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            s.run(None, feeds)
            times.append(time.perf_counter() - t)
        print(f"{args.part} at {args.size}x{args.size}, batch 1, {args.threads} thread(s): "
              + ", ".join(f"{x:.2f}" for x in times) + " s per call")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
