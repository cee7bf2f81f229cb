#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Shows a zmqmsgpacksink frame stream in a window, or saves it as JPEG files when there is no display.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: pipelines/show-stream.sh [OPTIONS] PORT [HOST]

Receives the msgpack [timestamp_ms, index, jpg] frames sent to tcp://HOST:PORT (HOST
defaults to localhost) with zmqmsgpacksrc and shows them in a window
(jpegdec ! videoconvert ! autovideosink). Without a display (neither DISPLAY nor
WAYLAND_DISPLAY set) the JPEGs are written unchanged to out/show-PORT/%05d.jpg instead.

Options:
  --out DIR            where frames are saved without a display (default out/show-PORT
                       in the repository)
  --save               save to files even when a display exists
  --frames N           stop after N frames
  --socket-type T      sub (default, from a PUB sink) or pull (from a PUSH sink)
  --bind               bind tcp://*:PORT instead of connecting to HOST
  -h, --help           this text

Stop with Ctrl-C.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=children.sh
. "$ROOT/pipelines/children.sh"
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "show-stream.sh: $*" >&2; exit 2; }

OUT=""
FORCE_SAVE=false
FRAMES=""
SOCKET_TYPE=""
BIND=false
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --save) FORCE_SAVE=true; shift ;;
    --frames) FRAMES=${2:?--frames needs a count}; shift 2 ;;
    --socket-type) SOCKET_TYPE=${2:?--socket-type needs sub or pull}; shift 2 ;;
    --bind) BIND=true; shift ;;
    -*) usage >&2; die "unknown option '$1'" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
if [ ${#POSITIONAL[@]} -lt 1 ] || [ ${#POSITIONAL[@]} -gt 2 ]; then usage >&2; die "expected PORT [HOST]"; fi
PORT=${POSITIONAL[0]}
HOST=${POSITIONAL[1]:-localhost}
is_port "$PORT" || die "PORT: expected 1..65535, found '$PORT'"
PORT=$((10#$PORT))
[ -z "$FRAMES" ] || [[ "$FRAMES" =~ ^[1-9][0-9]*$ ]] \
  || die "--frames: expected a positive count, found '$FRAMES'"
case "$SOCKET_TYPE" in ""|sub|pull) ;; *) die "--socket-type: expected sub or pull, found '$SOCKET_TYPE'" ;; esac

if ! gst-inspect-1.0 zmqmsgpacksrc >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 zmqmsgpacksrc >/dev/null 2>&1 \
  || die "GStreamer element zmqmsgpacksrc not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

if $BIND; then
  ENDPOINT="tcp://*:$PORT"
  SRC=(zmqmsgpacksrc "endpoint=\"$ENDPOINT\"" bind=true)
else
  ENDPOINT="tcp://$HOST:$PORT"
  SRC=(zmqmsgpacksrc "endpoint=\"$ENDPOINT\"")
fi
[ -z "$SOCKET_TYPE" ] || SRC+=("socket-type=$SOCKET_TYPE")
[ -z "$FRAMES" ] || SRC+=("num-buffers=$FRAMES")

if ! $FORCE_SAVE && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }; then
  echo "show-stream.sh: showing $ENDPOINT in a window" >&2
  # sync=false: show each frame as it arrives, the sender already paced it.
  exec gst-launch-1.0 -e "${SRC[@]}" ! jpegdec ! videoconvert ! autovideosink sync=false
fi

OUT=${OUT:-$ROOT/out/show-$PORT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if $FORCE_SAVE; then
  echo "show-stream.sh: saving $ENDPOINT to $OUT/%05d.jpg" >&2
else
  echo "show-stream.sh: no display (DISPLAY and WAYLAND_DISPLAY unset): saving $ENDPOINT to $OUT/%05d.jpg" >&2
fi
status=0
# A child, not exec, to count the files afterwards; kill PID ends it too.
run_child gst-launch-1.0 -e "${SRC[@]}" ! multifilesink location="\"$OUT/%05d.jpg\"" || status=$?
count=$(find "$OUT" -maxdepth 1 -name '[0-9][0-9][0-9][0-9][0-9].jpg' | wc -l)
echo "show-stream.sh: $count frames in $OUT" >&2
exit $status
