#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# WebRTC in and out: a WHIP endpoint (browser, OBS) -> i2itransform -> a WHEP endpoint (browsers),
# steered by a settings holder (the control room's prompt and sliders).
# Ctrl-C (SIGINT) ends the stream cleanly: gst-launch-1.0 -e drains the pipeline and exits 0.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: pipelines/whip-transform.sh [OPTIONS] [NAME=VALUE ...]

One machine (default):
  i2iwhipsrc (WHIP, http://HOST:8190/whip/endpoint) ! i2itransform ! i2iwhepsink (WHEP,
  http://HOST:8191/whep/endpoint), and a settings holder (i2i-prompt serve) that the
  transform follows: state on 127.0.0.1:5556, commands on 127.0.0.1:5560, where the control
  room (i2i-web) and i2i-prompt consoles send the prompt and the sliders.
With --scaleout, the primary of a scale-out (docs/scaleout.md): frames from the WHIP
publisher go to the workers (zmqdispatchsink, tcp://*:5555), the results come back in order
(zmqcollectsrc, tcp://*:5558, --playout-delay) and go out over WHEP; the holder listens on
all interfaces for the workers. Start workers with pipelines/worker.sh --primary THIS_HOST.

Endpoints:
  --host ADDR          address both HTTP endpoints listen on (default 127.0.0.1; 0.0.0.0 for
                       publishers and viewers on other machines: then set --token)
  --whip-port N        default 8190
  --whep-port N        default 8191
  --ice-address ADDR   extra local ICE address offered to peers (default 127.0.0.1)
  --token TOKEN        bearer token both endpoints require (Authorization: Bearer TOKEN;
                       OBS: its Bearer Token field); also from I2I_WEBRTC_TOKEN
  --allow-origin URL   a web origin whose pages may use the endpoints (repeatable; default
                       the control room on this machine: http://localhost:8765 and
                       http://127.0.0.1:8765, and http://HOST:8765; `none` for no page)
  --codec C            WHEP video: vp8 (default) or h264, encoded once for all viewers, or
                       per-viewer (one encoder per viewer)
  --whep-delay MS      river's fixed output delay (i2iwhepsink playout-delay): frames leave
                       at capture time + MS (default 0: as soon as transformed); the old
                       name --ts-offset still works for one release
Transform:
  --model DIR          i2itransform model (default models/demo)
  --size WxH           transform size, multiples of 8 (default 512x512)
  --prompt TEXT        what the picture should become
  --negative TEXT      what to steer away from (cfg-type full or initialize)
  --seed N             noise seed
  --t-index LIST       denoising steps, e.g. 22,32 (lower first index = stronger change)
  --guidance X         guidance scale
  --threads N          ONNX Runtime threads (default 0: all CPUs)
  --provider P         execution provider: auto (default), cpu, cuda, tensorrt
  NAME=VALUE           any other i2itransform property, e.g. latent-feedback=0.2
                       (settings-folder=DIR: the folder /style and /lora may name
                       files in; without it they are refused)
Settings (the holder starts with --prompt, --negative, --seed, --t-index, --guidance):
  --settings-port N    the holder's state port (default 5556)
  --control-port N     the holder's command port (default 5560)
  --osc-port N         OSC into the holder on HOST:N (default 0: off)
  --settings ENDPOINT  start no holder; follow the one publishing at ENDPOINT (its state
                       port, e.g. tcp://10.0.0.5:5556); the options above are then only the
                       transform's values until that holder publishes
  --no-settings        no holder: the transform runs on its own properties
Scale-out:
  --scaleout           dispatch to scale-out workers instead of transforming here
  --dispatch-port N    --scaleout: default 5555
  --collect-port N     --scaleout: default 5558
  --playout-delay MS   --scaleout: output delay after a frame entered (default 1000)
  -h, --help           this text

Publish: OBS 30+ Settings > Stream > Service "WHIP", Server
http://HOST:8190/whip/endpoint, Bearer Token the --token (empty without); or any WHIP client,
e.g. GStreamer's whipclientsink. Watch: any WHEP player at http://HOST:8191/whep/endpoint, or
the control room: start i2i-web (it talks to the holder on 5560) and open
  http://localhost:8765/?whip=http://HOST:8190/whip/endpoint&whep=http://HOST:8191/whep/endpoint
(with --token T, add &webrtc-token=T). Its camera is then published over WHIP, its output
plays over WHEP, and its prompt and sliders steer this transform. docs/webrtc.md has the rest.
EOF2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "whip-transform.sh: $*" >&2; exit 2; }
# A value for gst-launch-1.0's parser: quoted, with its quotes and backslashes escaped.
quoted() { local v=${1//\\/\\\\}; printf '"%s"' "${v//\"/\\\"}"; }

HOST=127.0.0.1
WHIP_PORT=8190
WHEP_PORT=8191
ICE=127.0.0.1
TOKEN=${I2I_WEBRTC_TOKEN:-}
ORIGINS=()
MODEL="$ROOT/models/demo"
SIZE=512x512
OFFSET=0
CODEC=vp8
PROMPT=""
NEGATIVE=""
SEED=""
TINDEX=""
GUIDANCE=""
THREADS=0
PROVIDER=""
PROPS=()
SETTINGS=holder
SETTINGS_ENDPOINT=""
SETTINGS_PORT=5556
CONTROL_PORT=5560
OSC_PORT=0
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
    --token) TOKEN=${2:?--token needs a token}; shift 2 ;;
    --allow-origin) ORIGINS+=("${2:?--allow-origin needs an origin (http://host:port) or none}"); shift 2 ;;
    --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
    --size) SIZE=${2:?--size needs WxH}; shift 2 ;;
    --whep-delay) OFFSET=${2:?--whep-delay needs milliseconds}; shift 2 ;;
    --ts-offset)
      echo "whip-transform.sh: --ts-offset is deprecated and will be removed in the next release: use --whep-delay" >&2
      OFFSET=${2:?--ts-offset needs milliseconds}; shift 2 ;;
    --codec) CODEC=${2:?--codec needs vp8, h264 or per-viewer}; shift 2 ;;
    --prompt) PROMPT=${2?--prompt needs a text}; shift 2 ;;
    --negative) NEGATIVE=${2?--negative needs a text}; shift 2 ;;
    --seed) SEED=${2:?--seed needs a number}; shift 2 ;;
    --t-index) TINDEX=${2:?--t-index needs a list like 22,32}; shift 2 ;;
    --guidance) GUIDANCE=${2:?--guidance needs a number}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a count}; shift 2 ;;
    --provider) PROVIDER=${2:?--provider needs auto, cpu, cuda or tensorrt}; shift 2 ;;
    --settings) SETTINGS=follow; SETTINGS_ENDPOINT=${2:?--settings needs an endpoint like tcp://HOST:5556}; shift 2 ;;
    --no-settings) SETTINGS=none; shift ;;
    --settings-port) SETTINGS_PORT=${2:?}; shift 2 ;;
    --control-port) CONTROL_PORT=${2:?}; shift 2 ;;
    --osc-port) OSC_PORT=${2:?--osc-port needs a port (0 = off)}; shift 2 ;;
    --scaleout) SCALEOUT=true; shift ;;
    --dispatch-port) DISPATCH_PORT=${2:?}; shift 2 ;;
    --collect-port) COLLECT_PORT=${2:?}; shift 2 ;;
    --playout-delay) DELAY=${2:?--playout-delay needs milliseconds}; shift 2 ;;
    [a-z]*=*) PROPS+=("$1"); shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

for p in WHIP_PORT WHEP_PORT DISPATCH_PORT COLLECT_PORT SETTINGS_PORT CONTROL_PORT; do
  is_port "${!p}" || die "--$(echo "${p%_PORT}" | tr 'A-Z_' 'a-z-')-port: expected 1..65535, found '${!p}'"
done
[ "$OSC_PORT" = 0 ] || is_port "$OSC_PORT" || die "--osc-port: expected 0 (off) or 1..65535, found '$OSC_PORT'"
[[ "$OFFSET" =~ ^[0-9]+$ ]] || die "--whep-delay: expected milliseconds, found '$OFFSET'"
[[ "$DELAY" =~ ^[0-9]+$ ]] || die "--playout-delay: expected milliseconds, found '$DELAY'"
[[ "$CODEC" =~ ^(vp8|h264|per-viewer)$ ]] || die "--codec: expected vp8, h264 or per-viewer, found '$CODEC'"
[[ "$SIZE" =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "--size: expected WxH, found '$SIZE'"
WIDTH=${BASH_REMATCH[1]} HEIGHT=${BASH_REMATCH[2]}
[ -z "$SEED" ] || [[ "$SEED" =~ ^[0-9]+$ ]] || die "--seed: expected a whole number, found '$SEED'"
[ -z "$TINDEX" ] || [[ "$TINDEX" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--t-index: expected a list like 22,32, found '$TINDEX'"
[ -z "$GUIDANCE" ] || [[ "$GUIDANCE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--guidance: expected a number, found '$GUIDANCE'"
[[ "$THREADS" =~ ^[0-9]+$ ]] || die "--threads: expected a count, found '$THREADS'"
[[ "$TOKEN" =~ ^[A-Za-z0-9._~+/=-]*$ ]] || die "--token: use letters, digits and . _ ~ + / = - only"
[ "$SETTINGS" != follow ] || [[ "$SETTINGS_ENDPOINT" =~ ^(tcp|ipc)://. ]] \
  || die "--settings: expected an endpoint like tcp://HOST:5556, found '$SETTINGS_ENDPOINT'"

if [ ${#ORIGINS[@]} -eq 0 ]; then
  ORIGINS=(http://localhost:8765 http://127.0.0.1:8765)
  case "$HOST" in 127.0.0.1|localhost|0.0.0.0) ;; *) ORIGINS+=("http://$HOST:8765") ;; esac
elif [ "${ORIGINS[*]}" = none ]; then
  ORIGINS=()
fi
for o in "${ORIGINS[@]}"; do
  [[ "$o" =~ ^https?://[^/,\ ]+$ || "$o" = '*' ]] || die "--allow-origin: expected http://host:port, found '$o'"
done
ALLOWED=$(IFS=,; echo "${ORIGINS[*]}")

if ! gst-inspect-1.0 i2iwhipsrc >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 i2iwhipsrc >/dev/null 2>&1 \
  || die "GStreamer element i2iwhipsrc not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

ACCESS=()
[ -z "$TOKEN" ] || ACCESS+=("token=$TOKEN")
[ -z "$ALLOWED" ] || ACCESS+=("allowed-origins=$ALLOWED")
IN=(i2iwhipsrc "host-addr=http://$HOST:$WHIP_PORT" "local-addresses=$ICE" "${ACCESS[@]}")
OUT=(i2iwhepsink "host-addr=http://$HOST:$WHEP_PORT" "local-addresses=$ICE"
     "playout-delay=$OFFSET" "codec=$CODEC" "${ACCESS[@]}")

# The transform's own values: what it runs on until the holder publishes (or for good
# without one).
TRANSFORM_PROPS=()
[ -z "$PROMPT" ] || TRANSFORM_PROPS+=("prompt=$(quoted "$PROMPT")")
[ -z "$NEGATIVE" ] || TRANSFORM_PROPS+=("negative-prompt=$(quoted "$NEGATIVE")")
[ -z "$SEED" ] || TRANSFORM_PROPS+=("seed=$SEED")
[ -z "$TINDEX" ] || TRANSFORM_PROPS+=("t-index-list=$TINDEX")
[ -z "$GUIDANCE" ] || TRANSFORM_PROPS+=("guidance-scale=$GUIDANCE")
[ -z "$PROVIDER" ] || TRANSFORM_PROPS+=("execution-provider=$PROVIDER")
TRANSFORM_PROPS+=("${PROPS[@]}")
if $SCALEOUT; then
  [ ${#PROPS[@]} -eq 0 ] && [ -z "$PROVIDER" ] && [ "$THREADS" = 0 ] \
    || die "--scaleout: the workers transform: give NAME=VALUE, --provider and --threads to pipelines/worker.sh"
  [ "$SETTINGS" = holder ] || [ -z "$PROMPT$NEGATIVE$SEED$TINDEX$GUIDANCE" ] \
    || die "--scaleout: the prompt and settings go to the holder this script starts (without --settings/--no-settings)"
fi

CLEANUP=()
cleanup() {
  for c in "${CLEANUP[@]}"; do eval "$c" || true; done
}
trap cleanup EXIT

# The settings holder: started here and checked before anything else starts, so a holder
# that cannot start (its ports taken) stops the script with its own message.
SETTINGS_SRC=()
if [ "$SETTINGS" = holder ]; then
  command -v i2i-prompt >/dev/null 2>&1 || die "i2i-prompt not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"
  BIND=127.0.0.1
  $SCALEOUT && BIND='*'
  INIT=()
  [ -z "$PROMPT" ] || INIT+=(--init "/prompt $PROMPT")
  [ -z "$NEGATIVE" ] || INIT+=(--init "/negative $NEGATIVE")
  [ -z "$SEED" ] || INIT+=(--init "/seed $SEED")
  [ -z "$TINDEX" ] || INIT+=(--init "/t $TINDEX")
  [ -z "$GUIDANCE" ] || INIT+=(--init "/guidance $GUIDANCE")
  OSC=off
  [ "$OSC_PORT" = 0 ] || OSC="$HOST:$OSC_PORT"
  i2i-prompt serve --state-bind "tcp://$BIND:$SETTINGS_PORT" --control-bind "tcp://$BIND:$CONTROL_PORT" \
    --osc "$OSC" "${INIT[@]}" </dev/null &
  HOLDER_PID=$!
  CLEANUP+=("kill $HOLDER_PID 2>/dev/null; wait $HOLDER_PID 2>/dev/null")
  for _ in $(seq 1 20); do
    kill -0 "$HOLDER_PID" 2>/dev/null \
      || die "the settings holder (i2i-prompt serve) could not start (its message is above): free ports $SETTINGS_PORT and $CONTROL_PORT, choose others with --settings-port/--control-port, follow a running holder with --settings tcp://HOST:$SETTINGS_PORT, or run without one (--no-settings)"
    if i2i-prompt --endpoint "tcp://127.0.0.1:$CONTROL_PORT" --timeout-ms 300 --report-ms 0 /status >/dev/null 2>&1 \
      && kill -0 "$HOLDER_PID" 2>/dev/null; then
      HOLDER_UP=true
      break
    fi
  done
  [ "${HOLDER_UP:-}" = true ] || die "the settings holder (i2i-prompt serve) does not answer on tcp://127.0.0.1:$CONTROL_PORT"
  $SCALEOUT || SETTINGS_SRC=(settingssrc "endpoint=tcp://127.0.0.1:$SETTINGS_PORT" ! i2i.settings)
elif [ "$SETTINGS" = follow ]; then
  $SCALEOUT && die "--scaleout: the workers follow the holder; start worker.sh with --settings-port, not this script with --settings"
  SETTINGS_SRC=(settingssrc "endpoint=$SETTINGS_ENDPOINT" ! i2i.settings)
fi

echo "whip-transform.sh: publish to http://$HOST:$WHIP_PORT/whip/endpoint," \
  "watch http://$HOST:$WHEP_PORT/whep/endpoint$([ -n "$TOKEN" ] && echo " (bearer token required)")" >&2
case "$SETTINGS" in
  holder) echo "whip-transform.sh: settings holder on $([ "$BIND" = '*' ] && echo 'all interfaces' || echo "$BIND"):$SETTINGS_PORT (state), :$CONTROL_PORT (commands: i2i-web, i2i-prompt --endpoint tcp://localhost:$CONTROL_PORT)$([ "$OSC_PORT" = 0 ] || echo ", OSC on $HOST:$OSC_PORT")" >&2 ;;
  follow) echo "whip-transform.sh: following the settings holder at $SETTINGS_ENDPOINT" >&2 ;;
  none) echo "whip-transform.sh: no settings holder: the transform runs on its own properties" >&2 ;;
esac

# exec keeps this PID, so a signal to the script (Ctrl-C, kill -INT) reaches gst-launch,
# whose first Ctrl-C ends the run with EOS. A watcher stops the holder once that PID is gone.
trap - EXIT
if [ ${#CLEANUP[@]} -gt 0 ]; then
  (
    trap '' INT TERM
    while kill -0 $$ 2>/dev/null; do sleep 0.5; done
    cleanup
  ) </dev/null >/dev/null 2>&1 &
fi

if $SCALEOUT; then
  exec gst-launch-1.0 -e \
    "${IN[@]}" ! videoconvert ! videoscale ! "video/x-raw,width=$WIDTH,height=$HEIGHT" ! jpegenc \
      ! zmqdispatchsink "endpoint=tcp://*:$DISPATCH_PORT" queue-policy=drop-oldest sync=false \
    zmqcollectsrc "endpoint=tcp://*:$COLLECT_PORT" "playout-delay=$DELAY" \
      ! jpegdec ! videoconvert ! "${OUT[@]}"
else
  [ -d "$MODEL" ] || die "model folder '$MODEL' does not exist (python scripts/make_models.py --out models)"
  exec gst-launch-1.0 -e \
    "${IN[@]}" ! videoconvert \
      ! i2itransform name=i2i "model=$MODEL" "width=$WIDTH" "height=$HEIGHT" "threads=$THREADS" \
        "${TRANSFORM_PROPS[@]}" \
      ! videoconvert ! "${OUT[@]}" \
    "${SETTINGS_SRC[@]}"
fi
