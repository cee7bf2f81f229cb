# SPDX-License-Identifier: MPL-2.0
# Sourced (not run) by the scripts that keep working after their pipeline ends
# (stream-images.sh, show-stream.sh, scripts/demo.sh): run_child runs a command as a child
# that ends with the script. The scripts that only start one pipeline exec it instead.
#
# The child runs in its own process group, so a Ctrl-C at the terminal reaches it once,
# through the script, as a `kill PID` or a closed terminal does: the script forwards the
# first SIGINT, SIGTERM or SIGHUP as SIGINT (gst-launch-1.0 -e then ends with EOS), and if
# the child has not ended 5 s later, SIGTERM, then SIGKILL. run_child returns the child's
# exit status; CHILD_SIGNALLED is set when a signal came.

CHILD_SIGNALLED=""

run_child() {
  set -m
  "$@" &
  local child=$!
  set +m
  CHILD_SIGNALLED=""
  # shellcheck disable=SC2064
  trap "CHILD_SIGNALLED=1; kill -INT $child 2>/dev/null" INT TERM HUP
  local status=0
  while :; do
    status=0
    wait "$child" || status=$?
    # wait also returns when a trapped signal arrives: then the child may still run.
    kill -0 "$child" 2>/dev/null || break
    if [ -n "$CHILD_SIGNALLED" ]; then
      local tick
      for tick in $(seq 1 50); do
        kill -0 "$child" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$child" 2>/dev/null && kill -TERM "$child" 2>/dev/null
      for tick in $(seq 1 20); do
        kill -0 "$child" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null
      status=0
      wait "$child" || status=$?
      break
    fi
  done
  trap - INT TERM HUP
  return "$status"
}
