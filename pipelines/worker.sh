#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# A worker of a scale-out: takes frames from the primary, transforms them, sends them back.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: pipelines/worker.sh --primary HOST [OPTIONS]

Runs one worker of a scale-out (see docs/scaleout.md): asks the primary's
zmqdispatchsink (HOST:5555) for frames whenever it has room, runs them through
i2itransform with the settings the primary's holder publishes (HOST:5556), and pushes
the results to the primary's zmqcollectsrc (HOST:5558). Start as many as you like, on as
many machines; they may come and go while the primary runs, and they reconnect by
themselves when the primary restarts.

Options:
  --primary HOST       the primary machine (required)
  --model DIR          model directory (default: models/demo)
  --batch-size N       frames per model call, and per job asked for (default 1)
  --threads N          ONNX Runtime threads of this worker (default 0: all CPUs it may use)
  --provider P         execution provider: auto (default), cpu, cuda, tensorrt
  --name NAME          name in the primary's stats and the settings holder's reports
                       (default HOSTNAME:PID, and the transform's name@HOST/PID in the reports)
  --prefetch N         batches asked for ahead of the pipeline (default 1)
  --quality Q          JPEG quality of the results (default: zmqmsgpacksink's)
  --slow MS            add MS of delay per frame (to try out an artificially slow worker)
  --passthrough        no i2itransform: decode and encode only (to check the wiring)
  --no-settings        do not follow the primary's settings holder
  --dispatch-port N    default 5555
  --settings-port N    default 5556
  --collect-port N     default 5558
  --keys DIR           ZeroMQ CURVE to a primary started with --keys: DIR/NAME.key_secret is
                       this worker's key (make it with 'i2i-prompt keygen DIR NAME' and copy
                       DIR/NAME.key into the primary's keys folder, allowed/), DIR/primary.key
                       the primary's public certificate
  --key-name NAME      the key pair in --keys to use (default: worker)
  -h, --help           this text

Any further NAME=VALUE arguments are i2itransform properties, e.g. prompt="a fox" seed=3
(the settings holder overrides them as soon as it publishes); settings-folder=DIR is the
folder whose files /style and /lora may name (without it they are refused).
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
die() { echo "worker.sh: $*" >&2; exit 2; }

PRIMARY=""
MODEL="$ROOT/models/demo"
BATCH=1
THREADS=0
PROVIDER=""
NAME=""
PREFETCH=1
QUALITY=""
SLOW=""
PASSTHROUGH=false
SETTINGS=true
DISPATCH_PORT=5555
SETTINGS_PORT=5556
COLLECT_PORT=5558
KEYS=""
KEY_NAME=worker
PROPS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --primary) PRIMARY=${2:?--primary needs a host}; shift 2 ;;
    --model) MODEL=${2:?--model needs a directory}; shift 2 ;;
    --batch-size) BATCH=${2:?--batch-size needs a count}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a count}; shift 2 ;;
    --provider) PROVIDER=${2:?--provider needs a name}; shift 2 ;;
    --name) NAME=${2:?--name needs a name}; shift 2 ;;
    --prefetch) PREFETCH=${2:?--prefetch needs a count}; shift 2 ;;
    --quality) QUALITY=${2:?--quality needs 1..100}; shift 2 ;;
    --slow) SLOW=${2:?--slow needs milliseconds}; shift 2 ;;
    --passthrough) PASSTHROUGH=true; shift ;;
    --no-settings) SETTINGS=false; shift ;;
    --dispatch-port) DISPATCH_PORT=${2:?}; shift 2 ;;
    --settings-port) SETTINGS_PORT=${2:?}; shift 2 ;;
    --collect-port) COLLECT_PORT=${2:?}; shift 2 ;;
    --keys) KEYS=${2:?--keys needs a folder}; shift 2 ;;
    --key-name) KEY_NAME=${2:?--key-name needs a name}; shift 2 ;;
    *=*) PROPS+=("$1"); shift ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[ -n "$PRIMARY" ] || { usage >&2; die "--primary HOST is required"; }
[[ "$PRIMARY" =~ ^[A-Za-z0-9._:-]+$|^\[[0-9A-Fa-f:]+\]$ ]] || die "--primary: not a host name or address: '$PRIMARY'"
for p in DISPATCH_PORT SETTINGS_PORT COLLECT_PORT; do
  is_port "${!p}" || die "--${p%_PORT}-port: expected 1..65535, found '${!p}'"
done
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "--batch-size: expected a positive count, found '$BATCH'"
[[ "$THREADS" =~ ^[0-9]+$ ]] || die "--threads: expected a count, found '$THREADS'"
[[ "$PREFETCH" =~ ^[1-9][0-9]*$ ]] || die "--prefetch: expected a positive count, found '$PREFETCH'"
[ -z "$QUALITY" ] || [[ "$QUALITY" =~ ^[0-9]+$ ]] || die "--quality: expected 1..100, found '$QUALITY'"
[ -z "$SLOW" ] || [[ "$SLOW" =~ ^[0-9]+$ ]] || die "--slow: expected milliseconds, found '$SLOW'"
[[ "$NAME" =~ ^[A-Za-z0-9._:@-]*$ ]] || die "--name: use letters, digits and . _ : @ - only"
[[ "$KEY_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--key-name: use letters, digits and . _ - only"
CURVE=()
if [ -n "$KEYS" ]; then
  [ -f "$KEYS/$KEY_NAME.key_secret" ] \
    || die "--keys: no $KEYS/$KEY_NAME.key_secret (make it with: i2i-prompt keygen $KEYS $KEY_NAME)"
  [ -f "$KEYS/primary.key" ] || die "--keys: no $KEYS/primary.key (copy the primary's public certificate there)"
  KEYS=$(cd "$KEYS" && pwd)
  CURVE=("curve-key=$KEYS/$KEY_NAME.key_secret" "curve-server-key=$KEYS/primary.key")
fi

if ! gst-inspect-1.0 zmqworkersrc >/dev/null 2>&1 && [ -f "$ROOT/.deps/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$ROOT/.deps/env.sh"
fi
gst-inspect-1.0 zmqworkersrc >/dev/null 2>&1 \
  || die "GStreamer element zmqworkersrc not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"

ARGS=(zmqworkersrc "endpoint=tcp://$PRIMARY:$DISPATCH_PORT" "batch-size=$BATCH" "prefetch=$PREFETCH" "${CURVE[@]}")
[ -z "$NAME" ] || ARGS+=("client-name=$NAME")
ARGS+=(! jpegdec)
[ -z "$SLOW" ] || ARGS+=(! identity "sleep-time=$((SLOW * 1000))")
if $PASSTHROUGH; then
  ARGS+=(! videoconvert)
  SETTINGS=false
else
  gst-inspect-1.0 i2itransform >/dev/null 2>&1 \
    || die "GStreamer element i2itransform not found: run 'bash scripts/setup.sh' and '. .deps/env.sh'"
  [ -d "$MODEL" ] || die "model directory '$MODEL' does not exist (scripts/setup.sh makes models/demo)"
  # A worker keeps every frame it takes: the primary's queue-policy decides what is
  # dropped, and the credits only ask for what the queue below has room for (a dropping
  # queue would take every frame offered and lose it, unseen by the primary).
  ARGS+=(! i2itransform name=i2i "model=$MODEL" "batch-size=$BATCH" "threads=$THREADS"
    drop-frames=never "max-queue=$BATCH")
  [ -z "$PROVIDER" ] || ARGS+=("execution-provider=$PROVIDER")
  ARGS+=("${PROPS[@]}")
fi
ARGS+=(! zmqmsgpacksink "endpoint=tcp://$PRIMARY:$COLLECT_PORT" bind=false socket-type=push sync=false "${CURVE[@]}")
[ -z "$QUALITY" ] || ARGS+=("quality=$QUALITY")
if $SETTINGS; then
  ARGS+=(settingssrc "endpoint=tcp://$PRIMARY:$SETTINGS_PORT" "${CURVE[@]}")
  [ -z "$NAME" ] || ARGS+=("client-name=$NAME")
  ARGS+=(! i2i.settings)
fi

echo "worker.sh: frames from $PRIMARY:$DISPATCH_PORT, results to $PRIMARY:$COLLECT_PORT" \
  "$($PASSTHROUGH && echo '(passthrough)' || echo "with $MODEL, batch $BATCH, $THREADS threads")" >&2
exec gst-launch-1.0 -e "${ARGS[@]}"
