#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Streams a folder of JPEGs at a fixed frame rate to a ZeroMQ port with zmqmsgpacksink.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: pipelines/stream-images.sh [OPTIONS]

Streams the JPEG files of a folder, in order, at a fixed frame rate as msgpack
[timestamp_ms, index, jpg] messages (zmqmsgpacksink). Each message carries the file's
bytes as they are: nothing is decoded or re-encoded on the way.

Options:
  --input-folder DIR   folder of .jpg/.jpeg files (default: out/frames in the repository)
  --fps N              frames per second, N or N/D (default 15)
  --port N             port to bind, tcp://*:N (default 5555)
  --endpoint EP        ZeroMQ endpoint instead of --port (e.g. tcp://127.0.0.1:6000)
  --socket-type T      pub (default) or push
  --loop               start again after the last file, until stopped
  --num-frames N       stop after N frames (counts across loops)
  -h, --help           this text

Files named with one running number (0000.jpg, frame_1.jpg, ...) are read in place with
multifilesrc; any other names are streamed in natural sort order (through numbered links
in a temporary folder). Receive with pipelines/show-stream.sh PORT or i2i-stats --port PORT.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=children.sh
. "$ROOT/pipelines/children.sh"
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "stream-images.sh: $*" >&2; exit 2; }

INPUT="$ROOT/out/frames"
FPS=15
PORT=5555
ENDPOINT=""
SOCKET_TYPE=""
LOOP=false
NUM_FRAMES=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --input-folder) INPUT=${2:?--input-folder needs a folder}; shift 2 ;;
    --fps) FPS=${2:?--fps needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --endpoint) ENDPOINT=${2:?--endpoint needs a value}; shift 2 ;;
    --socket-type) SOCKET_TYPE=${2:?--socket-type needs pub or push}; shift 2 ;;
    --loop) LOOP=true; shift ;;
    --num-frames) NUM_FRAMES=${2:?--num-frames needs a count}; shift 2 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ "$FPS" =~ ^[1-9][0-9]*(/[1-9][0-9]*)?$ ]] || die "--fps: expected N or N/D, found '$FPS'"
[[ "$FPS" == */* ]] || FPS="$FPS/1"
is_port "$PORT" || die "--port: expected 1..65535, found '$PORT'"
PORT=$((10#$PORT))
[ -z "$NUM_FRAMES" ] || [[ "$NUM_FRAMES" =~ ^[1-9][0-9]*$ ]] \
  || die "--num-frames: expected a positive count, found '$NUM_FRAMES'"
case "$SOCKET_TYPE" in ""|pub|push) ;; *) die "--socket-type: expected pub or push, found '$SOCKET_TYPE'" ;; esac
[ -d "$INPUT" ] || die "input folder '$INPUT' does not exist (make one with pipelines/make-frames.py)"
INPUT=$(cd "$INPUT" && pwd)

# This checkout's plugins, if it was set up and the caller did not source the file already.
if ! gst-inspect-1.0 zmqmsgpacksink >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 zmqmsgpacksink >/dev/null 2>&1 \
  || die "GStreamer element zmqmsgpacksink not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

# The files, in natural order.
mapfile -t FILES < <(find "$INPUT" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) \
  -printf '%f\n' | LC_ALL=C sort -V)
[ ${#FILES[@]} -gt 0 ] || die "no .jpg or .jpeg files in '$INPUT'"

# One running number in every name (same prefix and extension, consecutive numbers, all of
# one width or none zero-padded) means multifilesrc can read them in place.
LOCATION=""
START=0
if [[ "${FILES[0]}" =~ ^([^%]*[^0-9%]|)([0-9]+)(\.[A-Za-z]+)$ ]]; then
  prefix=${BASH_REMATCH[1]} ext=${BASH_REMATCH[3]} width=${#BASH_REMATCH[2]}
  first=$((10#${BASH_REMATCH[2]}))
  same_width=true unpadded=true ok=true
  for i in "${!FILES[@]}"; do
    f=${FILES[$i]}
    if [[ "$f" == "$prefix"* && "$f" == *"$ext" ]]; then
      num=${f#"$prefix"}; num=${num%"$ext"}
    else
      ok=false; break
    fi
    [[ "$num" =~ ^[0-9]+$ ]] || { ok=false; break; }
    [ $((10#$num)) -eq $((first + i)) ] || { ok=false; break; }
    [ ${#num} -eq "$width" ] || same_width=false
    [ "$num" = "$((10#$num))" ] || unpadded=false
  done
  if $ok && $same_width; then
    LOCATION="$INPUT/$prefix%0${width}d$ext" START=$first
  elif $ok && $unpadded; then
    LOCATION="$INPUT/$prefix%d$ext" START=$first
  fi
fi
if [ -z "$LOCATION" ]; then
  LINKS=$(mktemp -d "${TMPDIR:-/tmp}/stream-images.XXXXXX")
  trap 'rm -rf "$LINKS"' EXIT
  for i in "${!FILES[@]}"; do
    ln -s "$INPUT/${FILES[$i]}" "$LINKS/$(printf '%06d' "$i").jpg"
  done
  LOCATION="$LINKS/%06d.jpg" START=0
  echo "stream-images.sh: names are not one numbered sequence; streaming ${#FILES[@]} files in sorted order" >&2
fi

if [ -n "$ENDPOINT" ]; then
  SINK_TARGET="endpoint=\"$ENDPOINT\"" WHERE=$ENDPOINT
else
  SINK_TARGET="port=$PORT" WHERE="tcp://*:$PORT"
fi
SINK_OPTS=()
[ -z "$SOCKET_TYPE" ] || SINK_OPTS+=("socket-type=$SOCKET_TYPE")
SRC_OPTS=()
$LOOP && SRC_OPTS+=(loop=true)
[ -z "$NUM_FRAMES" ] || SRC_OPTS+=("num-buffers=$NUM_FRAMES")

echo "stream-images.sh: ${#FILES[@]} files from $INPUT at $FPS fps to $WHERE$($LOOP && echo ', looping')" >&2

# multifilesrc does not timestamp what it reads, so nothing downstream could pace the
# stream by itself. The first tee branch decodes each frame only as a metronome: jpegdec
# stamps frames from the caps' framerate and the synchronised fakesink holds the (one
# buffer deep) queue, which holds the tee, so files are read at the frame rate. The second
# branch sends the file bytes unchanged.
# A child, not exec: the links folder is removed when it ends (kill PID ends it too).
status=0
run_child gst-launch-1.0 -e \
  multifilesrc location="\"$LOCATION\"" start-index="$START" "${SRC_OPTS[@]}" \
    caps="image/jpeg,framerate=$FPS" \
  ! tee name=t \
  t. ! queue max-size-buffers=1 max-size-bytes=0 max-size-time=0 ! jpegdec ! fakesink sync=true \
  t. ! queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 \
  ! zmqmsgpacksink "$SINK_TARGET" "${SINK_OPTS[@]}" || status=$?
exit "$status"
