#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The decoder side of a split diffusion pipeline: latents from pipelines/split-unet.sh in,
# pictures out through the model's VAE decoder (i2idecode).
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: pipelines/split-decode.sh --unet HOST [OPTIONS]

Connects to pipelines/split-unet.sh on HOST, decodes each latent frame with i2idecode
(the VAE decoder of the same model directory, byte-identical to i2itransform alone) and
shows the pictures, or writes them as PNG files with --out. Frames wait in a receive
queue of --recv-queue frames; when it is full the oldest is dropped (--drop, the default)
or the connection is left to back up to the sender (--block). Use --zmq when the UNet
side runs with --zmq (zmqmsgpacksrc receives; float16 latents are widened back).

Options:
  --unet HOST          the machine running split-unet.sh (required)
  --port N             its TCP port (default 5561)
  --model DIR          the same model directory (default: models/demo)
  --recv-queue N       frames waiting for the decoder (default 4)
  --block              a full receive queue holds the connection instead of dropping
  --drop               a full receive queue drops its oldest frame (default)
  --zmq                receive with ZeroMQ (zmqmsgpacksrc), for split-unet.sh --zmq
  --out PATTERN        write PNG files (e.g. out/frame-%05d.png) instead of a window
  --threads N          ONNX Runtime threads (default 0: all CPUs)
  --provider P         execution provider: auto (default), cpu, cuda, tensorrt
  -h, --help           this text
EOF2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "split-decode.sh: $*" >&2; exit 2; }
count() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1: expected a count, found '$2'"; }

UNET=""
PORT=5561
MODEL="$ROOT/models/demo"
RECVQ=4
LEAKY=downstream
OUT=""
THREADS=0
PROVIDER=""
ZMQ=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --unet) UNET=${2:?--unet needs a host}; shift 2 ;;
    --port) PORT=${2:?--port needs a number}; shift 2 ;;
    --model) MODEL=${2:?--model needs a directory}; shift 2 ;;
    --recv-queue) RECVQ=${2:?--recv-queue needs a count}; shift 2 ;;
    --block) LEAKY=no; shift ;;
    --drop) LEAKY=downstream; shift ;;
    --out) OUT=${2:?--out needs a file pattern}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a count}; shift 2 ;;
    --provider) PROVIDER=${2:?--provider needs a name}; shift 2 ;;
    --zmq) ZMQ=1; shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[ -n "$UNET" ] || { usage >&2; die "--unet HOST is required"; }
[[ "$UNET" =~ ^[A-Za-z0-9._:-]+$ ]] || die "--unet: not a host name or address: '$UNET'"
count --port "$PORT"; count --recv-queue "$RECVQ"; count --threads "$THREADS"
((PORT >= 1 && PORT <= 65535)) || die "--port: expected 1..65535, found '$PORT'"
((RECVQ >= 1)) || die "--recv-queue: expected 1 or more"
[ -d "$MODEL/vae_decoder" ] || die "'$MODEL' has no vae_decoder/ (use the model directory of split-unet.sh)"

if ! gst-inspect-1.0 i2idecode >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 i2idecode >/dev/null 2>&1 \
  || die "GStreamer element i2idecode not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

if ((ZMQ)); then
  gst-inspect-1.0 zmqmsgpacksrc >/dev/null 2>&1 \
    || die "GStreamer element zmqmsgpacksrc not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"
  # receive-hwm: ZeroMQ itself holds at most --recv-queue more before the sender waits.
  ARGS=(zmqmsgpacksrc socket-type=pull "endpoint=tcp://$UNET:$PORT" "receive-hwm=$RECVQ")
  WHAT="ZeroMQ"
else
  ARGS=(tcpclientsrc "host=$UNET" "port=$PORT" ! gdpdepay)
  WHAT="GDP"
fi
ARGS+=(! queue "max-size-buffers=$RECVQ" max-size-bytes=0 max-size-time=0 "leaky=$LEAKY"
       ! i2idecode "model=$MODEL" "threads=$THREADS")
[ -z "$PROVIDER" ] || ARGS+=("execution-provider=$PROVIDER")
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  ARGS+=(! videoconvert ! pngenc ! multifilesink "location=$OUT")
else
  ARGS+=(! videoconvert ! autovideosink sync=false)
fi

echo "split-decode.sh: latents from $UNET:$PORT ($WHAT), decoder of $MODEL" >&2
exec gst-launch-1.0 -e "${ARGS[@]}"
