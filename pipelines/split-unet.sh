#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The UNet side of a split diffusion pipeline: frames in, final latents out on TCP for
# pipelines/split-decode.sh on another machine (or GPU), which runs the VAE decoder.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: pipelines/split-unet.sh [OPTIONS] [NAME=VALUE ...]

Runs i2itransform output=latent (docs/element.md, "Latent output and i2idecode") on a
camera or a test picture and serves each frame's latents (float32 [1, 4, H/8, W/8], 64 KiB
at 512x512) with their caps and timestamps (GStreamer's GDP framing) on TCP PORT, where
pipelines/split-decode.sh connects. A decoder that falls behind more than --send-queue
frames skips to the newest (the send queue stays bounded); a UNet that falls behind its
camera drops the oldest frame (i2itransform drop-frames=auto).

Options:
  --test               a moving test picture (default)
  --device DEV         a V4L2 camera, e.g. /dev/video0
  --model DIR          model directory (default: models/demo)
  --size N             model width and height (default 512)
  --fps N              frame rate of the test picture (default 30)
  --port N             TCP port to serve the latents on (default 5560)
  --send-queue N       frames queued per decoder before it skips to the newest (default 4)
  --threads N          ONNX Runtime threads (default 0: all CPUs)
  --provider P         execution provider: auto (default), cpu, cuda, tensorrt
  -h, --help           this text

Any NAME=VALUE arguments are i2itransform properties, e.g. prompt="a fox" seed=3.
EOF2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "split-unet.sh: $*" >&2; exit 2; }
count() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1: expected a count, found '$2'"; }

DEVICE=""
MODEL="$ROOT/models/demo"
SIZE=512
FPS=30
PORT=5560
SENDQ=4
THREADS=0
PROVIDER=""
PROPS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --test) DEVICE=""; shift ;;
    --device) DEVICE=${2:?--device needs a path}; shift 2 ;;
    --model) MODEL=${2:?--model needs a directory}; shift 2 ;;
    --size) SIZE=${2:?--size needs a number}; shift 2 ;;
    --fps) FPS=${2:?--fps needs a number}; shift 2 ;;
    --port) PORT=${2:?--port needs a number}; shift 2 ;;
    --send-queue) SENDQ=${2:?--send-queue needs a count}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a count}; shift 2 ;;
    --provider) PROVIDER=${2:?--provider needs a name}; shift 2 ;;
    *=*) PROPS+=("$1"); shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
count --size "$SIZE"; count --fps "$FPS"; count --port "$PORT"
count --send-queue "$SENDQ"; count --threads "$THREADS"
((PORT >= 1 && PORT <= 65535)) || die "--port: expected 1..65535, found '$PORT'"
((SIZE >= 8 && SIZE % 8 == 0)) || die "--size: expected a multiple of 8, found '$SIZE'"
((SENDQ >= 1)) || die "--send-queue: expected 1 or more"
[ -d "$MODEL" ] || die "model directory '$MODEL' does not exist (scripts/setup.sh makes models/demo)"

if ! gst-inspect-1.0 i2itransform >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 i2itransform >/dev/null 2>&1 \
  || die "GStreamer element i2itransform not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

if [ -n "$DEVICE" ]; then
  ARGS=(v4l2src "device=$DEVICE" ! videoconvert)
else
  ARGS=(videotestsrc is-live=true pattern=ball ! "video/x-raw,width=$SIZE,height=$SIZE,framerate=$FPS/1")
fi
ARGS+=(! i2itransform "model=$MODEL" output=latent "width=$SIZE" "height=$SIZE" "threads=$THREADS")
[ -z "$PROVIDER" ] || ARGS+=("execution-provider=$PROVIDER")
ARGS+=("${PROPS[@]}")
# recover-policy=latest: a decoder more than --send-queue frames behind skips to the newest.
ARGS+=(! gdppay ! tcpserversink host=0.0.0.0 "port=$PORT" sync=false
       unit-format=buffers "units-soft-max=$SENDQ" recover-policy=latest)

echo "split-unet.sh: latents of $MODEL at ${SIZE}x$SIZE on tcp port $PORT" >&2
exec gst-launch-1.0 -e "${ARGS[@]}"
