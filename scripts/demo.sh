#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The demo: set-up, sample frames, the design card pipeline, and its real-time report.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/demo.sh [OPTIONS]

Sets the project up (scripts/setup.sh), writes a few seconds of sample frames
(out/frames/%04d.jpg, 512x512, made locally), runs the design card pipeline

  multifilesrc location=out/frames/%04d.jpg caps=image/jpeg,framerate=15/1 ! jpegdec
    ! identity sync=true ! i2itransform model=models/demo prompt="$PROMPT" drop-frames=never
    ! zmqmsgpacksink port=PORT sync=false

while i2i-stats receives the stream, saves what it receives to out/demo/ (named like the
input, 0000.jpg, ...) and prints its report at the end. identity sync=true lets each frame
in at its time in the stream, as a camera would capture it, and zmqmsgpacksink stamps each
message with that time: the report's latency is capture to output (the transform, its
queue and the network), not only the network hop. Runs headless; nothing is downloaded.

Options:
  --port N           output port of zmqmsgpacksink (default 5557)
  --frames N         number of sample frames to generate (default 60, 4 s at 15 fps)
  --fps N            frame rate (default 15)
  --frames-dir DIR   stream your own DIR/%04d.jpg instead of generating sample frames
  --out DIR          where frames/ and demo/ are written (default out in the repository)
  --skip-setup       do not run scripts/setup.sh (it must have run before)
  -h, --help         this text
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=../pipelines/children.sh
. "$ROOT/pipelines/children.sh"
log() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; exit 1; }

PORT=5557
COUNT=60
FPS=15
FRAMES_DIR=""
OUT_BASE=out
SETUP=true
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --frames) COUNT=${2:?--frames needs a count}; shift 2 ;;
    --fps) FPS=${2:?--fps needs a value}; shift 2 ;;
    --frames-dir) FRAMES_DIR=${2:?--frames-dir needs a folder}; shift 2 ;;
    --out) OUT_BASE=${2:?--out needs a folder}; shift 2 ;;
    --skip-setup) SETUP=false; shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
is_port "$PORT" || die "--port: expected 1..65535, found '$PORT'"
PORT=$((10#$PORT))
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "--frames: expected a positive count, found '$COUNT'"
[[ "$FPS" =~ ^[1-9][0-9]*$ ]] || die "--fps: expected a positive whole number, found '$FPS'"

# The element between decoding and sending: the diffusion transform on the bundled
# demonstration model (models/demo, made by scripts/make_models.py). To stream the frames
# without the model, use TRANSFORM='videoconvert ! videoscale ! video/x-raw,width=512,height=512'.
PROMPT=${PROMPT:-"a neon sunset over the ocean"}
# drop-frames=never: every file frame is rendered; a slower machine shows it as latency.
TRANSFORM="i2itransform model=models/demo prompt=\"$PROMPT\" seed=2 t-index-list=32,45 drop-frames=never"

if $SETUP; then
  bash scripts/setup.sh
fi
[ -f .deps/env.sh ] || die ".deps/env.sh missing: run 'bash scripts/setup.sh' first"
# shellcheck disable=SC1091
. .deps/env.sh
for element in i2itransform zmqmsgpacksink jpegdec multifilesrc; do
  gst-inspect-1.0 "$element" >/dev/null 2>&1 \
    || die "GStreamer element '$element' not found (GST_PLUGIN_PATH=$GST_PLUGIN_PATH); run 'bash scripts/setup.sh'"
done
command -v i2i-stats >/dev/null || die "i2i-stats not built: run 'bash scripts/setup.sh'"

# 1. Input frames.
if [ -n "$FRAMES_DIR" ]; then
  FRAMES_DIR=$(cd "$FRAMES_DIR" && pwd)
  [ -f "$FRAMES_DIR/0000.jpg" ] || die "--frames-dir: expected $FRAMES_DIR/0000.jpg, 0001.jpg, ..."
  COUNT=$(find "$FRAMES_DIR" -maxdepth 1 -name '[0-9][0-9][0-9][0-9].jpg' | wc -l)
else
  FRAMES_DIR=$OUT_BASE/frames
  PY=.venv/bin/python
  [ -x "$PY" ] || PY=python3
  "$PY" pipelines/make-frames.py --out "$FRAMES_DIR" --count "$COUNT" --size 512 --clear
fi

# 2. The receiver: saves what arrives and reports. A subscriber can miss the first frames
#    while it joins, so it is not asked for an exact count; it is stopped (and reports)
#    once the pipeline has finished.
OUT=$OUT_BASE/demo
mkdir -p "$OUT"
rm -f "$OUT"/[0-9]*.jpg "$OUT"/stats.txt "$OUT"/stats.json
#    The verdict is judged against the input rate: does the pipeline keep up with it?
MIN_FPS=$(awk -v f="$FPS" 'BEGIN { printf "%.2f", f * 0.9 }')
MAX_INTERVAL_MS=$(awk -v f="$FPS" 'BEGIN { printf "%.1f", 1000 / (f * 0.9) }')
i2i-stats --port "$PORT" --frames "$COUNT" --timeout 60 --no-progress --quiet \
  --min-fps "$MIN_FPS" --max-interval-ms "$MAX_INTERVAL_MS" \
  --save "$OUT" >"$OUT/stats.txt" 2>"$OUT/stats.log" &
STATS_PID=$!
# SIGINT: i2i-stats writes its report (to stats.txt) before it ends.
cleanup() { kill -INT "$STATS_PID" 2>/dev/null && wait "$STATS_PID" 2>/dev/null || true; }
trap cleanup EXIT

# 3. The design card pipeline. identity sync=true lets each frame in at its stream time
#    (its capture time, which zmqmsgpacksink puts in the message); the sink sends at once.
log "pipeline: multifilesrc ($COUNT frames at $FPS fps) ! jpegdec ! identity sync=true ! $TRANSFORM ! zmqmsgpacksink port=$PORT sync=false"
set -f  # TRANSFORM is split into words on purpose; no file name expansion in it
# Bounded, so a stuck pipeline cannot hang a script or CI: SIGINT makes gst-launch send EOS.
LIMIT_S=$((COUNT / FPS + 60))
pipeline_status=0
# shellcheck disable=SC2086
run_child timeout -k 5 -s INT "$LIMIT_S" gst-launch-1.0 -e \
  multifilesrc location="$FRAMES_DIR/%04d.jpg" caps="image/jpeg,framerate=$FPS/1" ! jpegdec \
  ! identity sync=true ! $TRANSFORM \
  ! zmqmsgpacksink port="$PORT" sync=false >"$OUT/pipeline.log" 2>&1 || pipeline_status=$?
[ -z "$CHILD_SIGNALLED" ] || die "stopped (the pipeline ended with EOS; the partial report is in $OUT/stats.txt)"
if [ "$pipeline_status" != 0 ]; then
  cat "$OUT/pipeline.log" >&2
  die "the pipeline failed (log above; is port $PORT in use? try --port)"
fi
set +f

# 4. Report: let the last frames land, then stop the receiver, which prints its report.
for _ in $(seq 1 20); do
  kill -0 "$STATS_PID" 2>/dev/null || break
  sleep 0.1
done
kill -INT "$STATS_PID" 2>/dev/null || true
stats_status=0
wait "$STATS_PID" || stats_status=$?
trap - EXIT
[ "$stats_status" = 0 ] || { cat "$OUT/stats.log" >&2; die "i2i-stats failed ($stats_status)"; }
cat "$OUT/stats.txt"
saved=$(find "$OUT" -maxdepth 1 -name '[0-9]*.jpg' | wc -l)
log "input: $FRAMES_DIR/%04d.jpg ($COUNT frames); output: $saved frames in $OUT/ (same names); report: $OUT/stats.txt"
log "latency in the report: from each frame's capture (its time in the stream) to its arrival at i2i-stats"
log "to watch the output, run 'pipelines/show-stream.sh $PORT' in another terminal, then the demo again"
