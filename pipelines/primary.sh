#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The primary of a scale-out: frames to the workers, results back in order, the final stream.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: pipelines/primary.sh [INPUT] [OPTIONS]

Runs the primary machine of a scale-out (see docs/scaleout.md):
  - zmqdispatchsink  hands each frame to the next free worker      tcp://*:5555
  - i2i-prompt serve holds the settings the workers follow         tcp://*:5556 (+5560)
  - zmqcollectsrc    takes the workers' results, restores order    tcp://*:5558
  - zmqmsgpacksink   publishes the final [timestamp, index, jpg]   tcp://*:5557
Start workers on other machines with pipelines/worker.sh --primary THIS_HOST.

Input (one of):
  --frames DIR         the JPEG files of DIR in natural order (default: out/frames)
  --input ENDPOINT     a live [timestamp, index, jpg] stream (zmqmsgpacksrc), e.g. from
                       pipelines/stream-images.sh --port 5550: --input tcp://localhost:5550
  --test               a live test picture (videotestsrc, --size, --fps)

Options:
  --fps N              frame rate of --frames and --test (default 15); --frames with
                       --fps 0: as fast as the workers take frames (for benchmarks)
  --loop               --frames: start again after the last file
  --num-frames N       stop after N frames
  --size WxH           --test picture size (default 512x512)
  --policy P           block (default for --frames) or drop-oldest (default for live input)
  --max-queue N        frames waiting for a free worker (default 16)
  --playout-delay MS   output delay after a frame entered (default 1000): must cover the
                       slowest worker's time per frame plus its queue
  --dispatch-port N    default 5555
  --collect-port N     default 5558
  --output-port N      default 5557
  --settings-port N    the settings holder's state port (default 5556)
  --control-port N     the settings holder's command port (default 5560)
  --settings-init CMD  initial setting for the holder (repeatable), e.g. "/prompt a fox"
  --osc-port N         the settings holder's OSC input on UDP port N (0 = off; default: the
                       holder's, 0.0.0.0:8000, or off with --keys: OSC has no keys; with --keys
                       a port given here binds 127.0.0.1 only)
  --no-settings        do not run the settings holder (one is running elsewhere)
  --keys DIR           ZeroMQ CURVE on the worker ports (5555, 5558) and the settings
                       holder: DIR/primary.key_secret is this machine's key, DIR/allowed/
                       holds the workers' public certificates (NAME.key), and
                       DIR/controllers/ (if present, else DIR/allowed/) the keys that may
                       change settings. Make keys with 'i2i-prompt keygen DIR primary'
                       (see docs/scaleout.md); anyone else is refused and counted
  -h, --help           this text

Watch the result with: i2i-stats --port 5557, or pipelines/show-stream.sh 5557.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "primary.sh: $*" >&2; exit 2; }

MODE=frames
FRAMES="$ROOT/out/frames"
INPUT=""
FPS=15
LOOP=false
NUM_FRAMES=""
SIZE=512x512
POLICY=""
MAX_QUEUE=16
DELAY=1000
DISPATCH_PORT=5555
COLLECT_PORT=5558
OUTPUT_PORT=5557
SETTINGS_PORT=5556
CONTROL_PORT=5560
SETTINGS=true
INIT=()
OSC_PORT=""
KEYS=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --frames) MODE=frames; FRAMES=${2:?--frames needs a folder}; shift 2 ;;
    --input) MODE=input; INPUT=${2:?--input needs an endpoint}; shift 2 ;;
    --test) MODE="test"; shift ;;
    --fps) FPS=${2:?--fps needs a value}; shift 2 ;;
    --loop) LOOP=true; shift ;;
    --num-frames) NUM_FRAMES=${2:?--num-frames needs a count}; shift 2 ;;
    --size) SIZE=${2:?--size needs WxH}; shift 2 ;;
    --policy) POLICY=${2:?--policy needs block or drop-oldest}; shift 2 ;;
    --max-queue) MAX_QUEUE=${2:?--max-queue needs a count}; shift 2 ;;
    --playout-delay) DELAY=${2:?--playout-delay needs milliseconds}; shift 2 ;;
    --dispatch-port) DISPATCH_PORT=${2:?}; shift 2 ;;
    --collect-port) COLLECT_PORT=${2:?}; shift 2 ;;
    --output-port) OUTPUT_PORT=${2:?}; shift 2 ;;
    --settings-port) SETTINGS_PORT=${2:?}; shift 2 ;;
    --control-port) CONTROL_PORT=${2:?}; shift 2 ;;
    --settings-init) INIT+=(--init "${2:?--settings-init needs a command}"); shift 2 ;;
    --osc-port) OSC_PORT=${2:?--osc-port needs a port (0 = off)}; shift 2 ;;
    --no-settings) SETTINGS=false; shift ;;
    --keys) KEYS=${2:?--keys needs a folder}; shift 2 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

for p in DISPATCH_PORT COLLECT_PORT OUTPUT_PORT SETTINGS_PORT CONTROL_PORT; do
  is_port "${!p}" || die "--${p%_PORT}-port: expected 1..65535, found '${!p}'"
done
[ -z "$OSC_PORT" ] || [ "$OSC_PORT" = 0 ] || is_port "$OSC_PORT" \
  || die "--osc-port: expected 0 (off) or 1..65535, found '$OSC_PORT'"
[[ "$FPS" =~ ^[0-9]+(/[1-9][0-9]*)?$ ]] || die "--fps: expected N or N/D, found '$FPS'"
[[ "$FPS" == */* ]] || FPS="$FPS/1"
[ -z "$NUM_FRAMES" ] || [[ "$NUM_FRAMES" =~ ^[1-9][0-9]*$ ]] \
  || die "--num-frames: expected a positive count, found '$NUM_FRAMES'"
[[ "$MAX_QUEUE" =~ ^[1-9][0-9]*$ ]] || die "--max-queue: expected a positive count, found '$MAX_QUEUE'"
[[ "$DELAY" =~ ^[0-9]+$ ]] || die "--playout-delay: expected milliseconds, found '$DELAY'"
[[ "$SIZE" =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "--size: expected WxH, found '$SIZE'"
WIDTH=${BASH_REMATCH[1]} HEIGHT=${BASH_REMATCH[2]}
if [ -z "$POLICY" ]; then
  if [ "$MODE" = frames ]; then POLICY=block; else POLICY=drop-oldest; fi
fi
case "$POLICY" in block|drop-oldest) ;; *) die "--policy: expected block or drop-oldest, found '$POLICY'" ;; esac

CURVE=()
SETTINGS_CURVE=()
if [ -n "$KEYS" ]; then
  [ -f "$KEYS/primary.key_secret" ] \
    || die "--keys: no $KEYS/primary.key_secret (make it with: i2i-prompt keygen $KEYS primary)"
  [ -d "$KEYS/allowed" ] && compgen -G "$KEYS/allowed/*.key" >/dev/null \
    || die "--keys: no worker keys in $KEYS/allowed/ (copy each worker's NAME.key there)"
  KEYS=$(cd "$KEYS" && pwd)
  CURVE=("curve-key=$KEYS/primary.key_secret" "curve-allow=$KEYS/allowed")
  CONTROLLERS="$KEYS/allowed"
  [ -d "$KEYS/controllers" ] && CONTROLLERS="$KEYS/controllers"
  SETTINGS_CURVE=(--key "$KEYS/primary.key_secret" --allow "$CONTROLLERS" --allow-subscribers "$KEYS/allowed")
fi

if ! gst-inspect-1.0 zmqdispatchsink >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 zmqdispatchsink >/dev/null 2>&1 \
  || die "GStreamer element zmqdispatchsink not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

CLEANUP=()
cleanup() {
  for c in "${CLEANUP[@]}"; do eval "$c" || true; done
}
trap cleanup EXIT

SRC_OPTS=()
[ -z "$NUM_FRAMES" ] || SRC_OPTS+=("num-buffers=$NUM_FRAMES")
KEEP_INDEX=false
case "$MODE" in
  frames)
    [ -d "$FRAMES" ] || die "input folder '$FRAMES' does not exist (make one with pipelines/make-frames.py)"
    FRAMES=$(cd "$FRAMES" && pwd -P)
    mapfile -t FILES < <(find "$FRAMES" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) \
      -printf '%f\n' | LC_ALL=C sort -V)
    [ ${#FILES[@]} -gt 0 ] || die "no .jpg or .jpeg files in '$FRAMES'"
    # multifilesrc reads one numbered sequence: link the files in order.
    LINKS=$(mktemp -d "${TMPDIR:-/tmp}/primary-frames.XXXXXX")
    CLEANUP+=("rm -rf '$LINKS'")
    for i in "${!FILES[@]}"; do
      ln -s "$FRAMES/${FILES[$i]}" "$LINKS/$(printf '%06d' "$i").jpg"
    done
    $LOOP && SRC_OPTS+=(loop=true)
    SOURCE="multifilesrc location=$LINKS/%06d.jpg ${SRC_OPTS[*]} caps=image/jpeg,framerate=$FPS"
    # The dispatcher paces these untimestamped frames at the caps' frame rate (sync=true),
    # the first when the first worker is there; 0 fps: as fast as the workers take them.
    SYNC=true
    [ "${FPS%%/*}" = 0 ] && SYNC=false
    SOURCE="$SOURCE ! zmqdispatchsink name=d sync=$SYNC"
    WHAT="${#FILES[@]} files from $FRAMES at $FPS fps"
    ;;
  input)
    SOURCE="zmqmsgpacksrc endpoint=$INPUT ${SRC_OPTS[*]} ! zmqdispatchsink name=d sync=false"
    # Keep the stream's own frame numbers (and its capture times, always kept).
    KEEP_INDEX=true
    WHAT="the stream at $INPUT"
    ;;
  test)
    SOURCE="videotestsrc is-live=true pattern=ball ${SRC_OPTS[*]} \
      ! video/x-raw,width=$WIDTH,height=$HEIGHT,framerate=$FPS ! jpegenc ! zmqdispatchsink name=d sync=false"
    WHAT="a ${WIDTH}x$HEIGHT test picture at $FPS fps"
    ;;
esac

if $SETTINGS; then
  command -v i2i-prompt >/dev/null 2>&1 || die "i2i-prompt not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"
  # The holder's own rules: 0 = off; with CURVE keys a port binds 127.0.0.1 only, and OSC is off
  # unless asked for (OSC has no keys).
  OSC=()
  [ -n "$OSC_PORT" ] && OSC=(--osc-port "$OSC_PORT")
  i2i-prompt serve --state-bind "tcp://*:$SETTINGS_PORT" --control-bind "tcp://*:$CONTROL_PORT" \
    "${OSC[@]}" "${SETTINGS_CURVE[@]}" "${INIT[@]}" &
  SETTINGS_PID=$!
  CLEANUP+=("kill $SETTINGS_PID 2>/dev/null; wait $SETTINGS_PID 2>/dev/null")
  # Go on only with our own holder on both ports: if it cannot bind (a port taken, by a
  # stale holder for instance) it exits with its error, and so do we.
  holder_listens() {
    command -v ss >/dev/null 2>&1 || { sleep 1; return 0; }
    local p
    for p in "$SETTINGS_PORT" "$CONTROL_PORT"; do
      ss -Hltnp "sport = :$p" 2>/dev/null | grep -q "pid=$SETTINGS_PID," || return 1
    done
  }
  for _ in $(seq 1 200); do
    if ! kill -0 "$SETTINGS_PID" 2>/dev/null; then
      status=0
      wait "$SETTINGS_PID" || status=$?
      die "the settings holder (i2i-prompt serve) did not start (exit status $status; its error is above): nothing started. Free the port or choose others (--settings-port, --control-port, --osc-port), or use --no-settings to follow a holder that runs elsewhere"
    fi
    holder_listens && break
    sleep 0.05
  done
  holder_listens || die "the settings holder (i2i-prompt serve) is not listening on ports $SETTINGS_PORT and $CONTROL_PORT after 10 s"
fi

echo "primary.sh: $WHAT to workers on port $DISPATCH_PORT ($POLICY, queue $MAX_QUEUE);" \
  "results on $COLLECT_PORT, played ${DELAY} ms after entry, published on $OUTPUT_PORT" \
  "$([ -n "$KEYS" ] && echo "(CURVE: keys in $KEYS)")" >&2

# exec keeps this PID, so a signal to the script (Ctrl-C, kill -INT) reaches gst-launch,
# whose first Ctrl-C ends the run with EOS. A watcher cleans up (settings holder, frame
# links) once that PID is gone.
trap - EXIT
if [ ${#CLEANUP[@]} -gt 0 ]; then
  (
    trap '' INT TERM
    while kill -0 $$ 2>/dev/null; do sleep 0.5; done
    cleanup
  ) </dev/null >/dev/null 2>&1 &
fi

# $SOURCE is split into words on purpose; nothing in it is a file pattern.
set -f
# shellcheck disable=SC2086
exec gst-launch-1.0 -e \
  $SOURCE "endpoint=tcp://*:$DISPATCH_PORT" queue-policy=$POLICY max-queue=$MAX_QUEUE keep-index=$KEEP_INDEX \
  "${CURVE[@]}" \
  zmqcollectsrc "endpoint=tcp://*:$COLLECT_PORT" playout-delay=$DELAY "${CURVE[@]}" \
  ! zmqmsgpacksink port=$OUTPUT_PORT sync=false
