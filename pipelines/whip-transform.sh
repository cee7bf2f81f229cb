#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# WebRTC in and out: a WHIP endpoint (browser, OBS) -> i2itransform -> a WHEP endpoint (browsers).
# Ctrl-C (SIGINT) ends the stream cleanly: gst-launch-1.0 -e drains the pipeline and exits 0.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: pipelines/whip-transform.sh [OPTIONS]

One machine (default):
  i2iwhipsrc (WHIP, http://HOST:8190/whip/endpoint) ! i2itransform ! i2iwhepsink (WHEP,
  http://HOST:8191/whep/endpoint)
With --scaleout, the primary of a scale-out (docs/scaleout.md): frames from the WHIP
publisher go to the workers (zmqdispatchsink, tcp://*:5555), the results come back in order
(zmqcollectsrc, tcp://*:5558, --playout-delay) and go out over WHEP. Start workers with
pipelines/worker.sh --primary THIS_HOST.

Options:
  --host ADDR          address both HTTP endpoints listen on (default 127.0.0.1; 0.0.0.0 for
                       publishers and viewers on other machines)
  --whip-port N        default 8190
  --whep-port N        default 8191
  --ice-address ADDR   extra local ICE address offered to peers (default 127.0.0.1)
  --model DIR          i2itransform model (default models/demo)
  --size WxH           transform size, multiples of 8 (default 512x512)
  --ts-offset MS       river's fixed output delay: frames leave at capture time + MS
                       (default 0: as soon as transformed)
  --codec C            WHEP video: vp8 (default) or h264, encoded once for all viewers, or
                       per-viewer (one encoder per viewer)
  --scaleout           dispatch to scale-out workers instead of transforming here
  --dispatch-port N    --scaleout: default 5555
  --collect-port N     --scaleout: default 5558
  --playout-delay MS   --scaleout: output delay after a frame entered (default 1000)
  -h, --help           this text

Publish: OBS 30+ Settings > Stream > Service "WHIP", Server
http://HOST:8190/whip/endpoint (no bearer token); or any WHIP client. Watch: a WHEP player
at http://HOST:8191/whep/endpoint, or the control room page (i2i-web --whip/--whep).
EOF2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "whip-transform.sh: $*" >&2; exit 2; }

HOST=127.0.0.1
WHIP_PORT=8190
WHEP_PORT=8191
ICE=127.0.0.1
MODEL="$ROOT/models/demo"
SIZE=512x512
OFFSET=0
CODEC=vp8
SCALEOUT=false
DISPATCH_PORT=5555
COLLECT_PORT=5558
DELAY=1000
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --host) HOST=${2:?--host needs an address}; shift 2 ;;
    --whip-port) WHIP_PORT=${2:?}; shift 2 ;;
    --whep-port) WHEP_PORT=${2:?}; shift 2 ;;
    --ice-address) ICE=${2:?--ice-address needs an address}; shift 2 ;;
    --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
    --size) SIZE=${2:?--size needs WxH}; shift 2 ;;
    --ts-offset) OFFSET=${2:?--ts-offset needs milliseconds}; shift 2 ;;
    --codec) CODEC=${2:?--codec needs vp8, h264 or per-viewer}; shift 2 ;;
    --scaleout) SCALEOUT=true; shift ;;
    --dispatch-port) DISPATCH_PORT=${2:?}; shift 2 ;;
    --collect-port) COLLECT_PORT=${2:?}; shift 2 ;;
    --playout-delay) DELAY=${2:?--playout-delay needs milliseconds}; shift 2 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

for p in WHIP_PORT WHEP_PORT DISPATCH_PORT COLLECT_PORT; do
  is_port "${!p}" || die "--$(echo "${p%_PORT}" | tr 'A-Z_' 'a-z-')-port: expected 1..65535, found '${!p}'"
done
[[ "$OFFSET" =~ ^[0-9]+$ ]] || die "--ts-offset: expected milliseconds, found '$OFFSET'"
[[ "$DELAY" =~ ^[0-9]+$ ]] || die "--playout-delay: expected milliseconds, found '$DELAY'"
[[ "$CODEC" =~ ^(vp8|h264|per-viewer)$ ]] || die "--codec: expected vp8, h264 or per-viewer, found '$CODEC'"
[[ "$SIZE" =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "--size: expected WxH, found '$SIZE'"
WIDTH=${BASH_REMATCH[1]} HEIGHT=${BASH_REMATCH[2]}

if ! gst-inspect-1.0 i2iwhipsrc >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 i2iwhipsrc >/dev/null 2>&1 \
  || die "GStreamer element i2iwhipsrc not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

IN="i2iwhipsrc host-addr=http://$HOST:$WHIP_PORT local-addresses=$ICE"
OUT="i2iwhepsink host-addr=http://$HOST:$WHEP_PORT local-addresses=$ICE ts-offset=$((OFFSET * 1000000)) codec=$CODEC"
echo "whip-transform.sh: publish to http://$HOST:$WHIP_PORT/whip/endpoint," \
  "watch http://$HOST:$WHEP_PORT/whep/endpoint" >&2
set -f
if $SCALEOUT; then
  # shellcheck disable=SC2086
  exec gst-launch-1.0 -e \
    $IN ! videoconvert ! videoscale ! "video/x-raw,width=$WIDTH,height=$HEIGHT" ! jpegenc \
      ! zmqdispatchsink "endpoint=tcp://*:$DISPATCH_PORT" queue-policy=drop-oldest sync=false \
    zmqcollectsrc "endpoint=tcp://*:$COLLECT_PORT" playout-delay=$DELAY \
      ! jpegdec ! videoconvert ! $OUT
else
  [ -d "$MODEL" ] || die "model folder '$MODEL' does not exist (python scripts/make_models.py --out models)"
  # shellcheck disable=SC2086
  exec gst-launch-1.0 -e \
    $IN ! videoconvert ! i2itransform "model=$MODEL" width=$WIDTH height=$HEIGHT \
      ! videoconvert ! $OUT
fi
