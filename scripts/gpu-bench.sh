#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# GPU benchmark: sd-turbo-shaped and sdxl-turbo-shaped models (real architecture sizes, random
# weights) through the engine at 512x512 on CUDA and TensorRT, batch 1 and 4: frames/s and
# latency, each against bare ONNX Runtime on the same graphs in the same run.
#
#   bash scripts/gpu-bench.sh [--models "sdturbo sdxl-turbo"] [--providers "cuda tensorrt"] [--batches "1 4"] [--frames 50]
#                             [--offline]
#
# Needs an NVIDIA GPU with its driver. It installs, into .venv-gpu (not the test venv), the
# onnxruntime-gpu wheel (CUDA and TensorRT providers) and the CUDA 13 / cuDNN 9 / TensorRT 10 runtime
# wheels it loads, and points ORT_DYLIB_PATH at that library. The models are made once under
# models/sdturbo-shaped (about 5 GB) and models/sdxl-turbo-shaped (about 14 GB; making it needs
# about 12 GB of free memory). The first TensorRT run builds engines (minutes); they are
# cached in .deps/trt-cache, keyed by model, shapes, batch and precision.
#
# --offline: no download and no build, for an air-gapped machine with the offline GPU kit
# (scripts/gpu-kit.sh unpack prints the exports it needs: ORT_DYLIB_PATH, LD_LIBRARY_PATH and I2I_KIT).
# The ONNX Runtime, CUDA, cuDNN and TensorRT libraries come from the kit, engine-bench is the kit's
# binary, and the models are made here with numpy + onnx (installed from the kit's wheels into
# .venv-gpu when the system python lacks them). Run it as bash "$I2I_KIT/scripts/gpu-bench.sh" --offline.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODELS="sdturbo sdxl-turbo"
PROVIDERS="cuda tensorrt"
BATCHES="1 4"
FRAMES=50
OFFLINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS=$2; shift 2 ;;
    --providers) PROVIDERS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --frames) FRAMES=$2; shift 2 ;;
    --offline) OFFLINE=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu-bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu-bench: no NVIDIA GPU found (nvidia-smi)" >&2; exit 1; }

PYTHON=.venv/bin/python
if [ "$OFFLINE" = 1 ]; then
  [ -n "${I2I_KIT:-}" ] && [ -d "$I2I_KIT/wheels" ] \
    || { echo "gpu-bench: --offline needs the kit: run scripts/gpu-kit.sh unpack and paste the exports it prints" >&2; exit 1; }
  [ -f "${ORT_DYLIB_PATH:-}" ] || { echo "gpu-bench: ORT_DYLIB_PATH (${ORT_DYLIB_PATH:-unset}) is not a file: paste gpu-kit.sh unpack's exports" >&2; exit 1; }
  if python3 -c "import numpy, onnx" 2>/dev/null; then
    PYTHON=python3
  else
    [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install -q --no-index --find-links "$I2I_KIT/wheels" numpy onnx
    PYTHON=.venv-gpu/bin/python
  fi
  bench() { "$I2I_KIT/bin/engine-bench" "$@"; }
else
  bash scripts/setup.sh
  if [ ! -x .venv-gpu/bin/python ]; then
    python3 -m venv .venv-gpu
  fi
  .venv-gpu/bin/python -m pip install -q --disable-pip-version-check \
    "onnxruntime-gpu==1.31.*" "nvidia-cudnn-cu13==9.*" "nvidia-cuda-runtime==13.*" "nvidia-cublas==13.*" \
    "nvidia-curand" "nvidia-cufft" "tensorrt-cu13-libs>=10,<11"
  SITE=$(.venv-gpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  export ORT_DYLIB_PATH=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
  # The providers dlopen CUDA, cuDNN and TensorRT by soname: put the wheels' lib folders first.
  LIBS=$(find "$SITE/nvidia" "$SITE/tensorrt_libs" -maxdepth 2 -name lib -type d 2>/dev/null | tr '\n' ':')
  LIBS="$LIBS$(dirname "$ORT_DYLIB_PATH")"
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bench() { cargo run --release --quiet -p gst-plugin-i2i --example engine-bench -- "$@"; }
fi

mkdir -p .deps/trt-cache out
for kind in $MODELS; do
  case "$kind" in
    sdturbo|sdxl-turbo) ;;
    *) echo "gpu-bench: unknown model '$kind' (sdturbo or sdxl-turbo)" >&2; exit 2 ;;
  esac
  MODEL=models/$kind-shaped
  if [ ! -f "$MODEL/unet/model.onnx" ]; then
    "$PYTHON" scripts/make_models.py "--$kind-shaped" "$MODEL"
  fi
  for provider in $PROVIDERS; do
    for batch in $BATCHES; do
      fp16=0; [ "$provider" = tensorrt ] && fp16=1
      echo "== $kind, $provider, batch $batch, fp16=$fp16"
      bench --model "$MODEL" --size 512 --batch "$batch" --frames "$FRAMES" --rounds 3 \
        --t-index-list 45 --cfg self --provider "$provider" --fp16 "$fp16" \
        --cache "$ROOT/.deps/trt-cache" | tee "out/gpu-bench-$kind-$provider-b$batch.txt"
    done
  done
done
