#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The UNet side of a split diffusion pipeline: frames in, final latents out on TCP (GDP
# framing, or ZeroMQ with --zmq) for pipelines/split-decode.sh on another machine (or
# GPU), which runs the VAE decoder.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: pipelines/split-unet.sh [OPTIONS] [NAME=VALUE ...]

Runs i2itransform output=latent (docs/element.md, "Latent output and i2idecode") on a
camera or a test picture and serves each frame's latents (float32 [1, 4, H/8, W/8], 64 KiB
at 512x512) with their caps and timestamps on TCP PORT, where pipelines/split-decode.sh
connects (with the same --zmq choice). A UNet that falls behind its camera drops the
oldest frame (i2itransform drop-frames=auto).

Transports (docs/scaleout.md, "Latents between machines"):
  GDP (default)  GStreamer's GDP framing on tcpserversink; a decoder that falls behind
                 more than --send-queue frames skips to the newest.
  --zmq          zmqmsgpacksink (PUSH) sends [timestamp, index, payload, meta] messages;
                 at most --send-queue frames wait for the decoder (send-hwm), then the
                 UNet waits for it (back-pressure: the camera side drops its oldest
                 frames meanwhile); --fp16-wire halves the bytes.

Options:
  --test               a moving test picture (default)
  --device DEV         a V4L2 camera, e.g. /dev/video0
  --model DIR          model directory (default: models/demo)
  --size N             model width and height (default 512)
  --fps N              frame rate of the test picture (default 30)
  --port N             TCP port to serve the latents on (default 5561)
  --send-queue N       frames queued for the decoder: GDP skips to the newest beyond them,
                       --zmq waits (default 4)
  --zmq                send with ZeroMQ (zmqmsgpacksink) instead of GDP over TCP
  --fp16-wire          with --zmq: float16 latents on the wire (32 KiB at 512x512; the
                       pictures may differ in the last bits)
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
PORT=5561
SENDQ=4
THREADS=0
PROVIDER=""
ZMQ=0
FP16_WIRE=0
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
    --zmq) ZMQ=1; shift ;;
    --fp16-wire) FP16_WIRE=1; shift ;;
    *=*) PROPS+=("$1"); shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
count --size "$SIZE"; count --fps "$FPS"; count --port "$PORT"
count --send-queue "$SENDQ"; count --threads "$THREADS"
((PORT >= 1 && PORT <= 65535)) || die "--port: expected 1..65535, found '$PORT'"
((SIZE >= 8 && SIZE % 8 == 0)) || die "--size: expected a multiple of 8, found '$SIZE'"
((SENDQ >= 1)) || die "--send-queue: expected 1 or more"
((FP16_WIRE == 0 || ZMQ == 1)) || die "--fp16-wire needs --zmq (GDP carries the latents as they are)"
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
if ((ZMQ)); then
  gst-inspect-1.0 zmqmsgpacksink >/dev/null 2>&1 \
    || die "GStreamer element zmqmsgpacksink not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"
  # PUSH with send-hwm: ZeroMQ holds at most --send-queue frames, then the push waits.
  ARGS+=(! zmqmsgpacksink socket-type=push bind=true "endpoint=tcp://*:$PORT"
         "send-hwm=$SENDQ" sync=false)
  ((FP16_WIRE == 0)) || ARGS+=(latent-dtype=f16)
  WHAT="ZeroMQ"
else
  # recover-policy=latest: a decoder more than --send-queue frames behind skips to the newest.
  ARGS+=(! gdppay ! tcpserversink host=0.0.0.0 "port=$PORT" sync=false
         unit-format=buffers "units-soft-max=$SENDQ" recover-policy=latest)
  WHAT="GDP"
fi

echo "split-unet.sh: latents of $MODEL at ${SIZE}x$SIZE on tcp port $PORT ($WHAT)" >&2
exec gst-launch-1.0 -e "${ARGS[@]}"
