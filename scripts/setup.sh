#!/usr/bin/env bash
# One idempotent set-up step for the demo and the tests:
#  1. Debian/Ubuntu packages (GStreamer, libjpeg-turbo, libzmq, Python venv support, Chromium and
#     its driver for the browser test of i2i-web's page, openssl for its TLS test), and a Rust
#     toolchain from rustup when there is no cargo;
#  2. a Python virtual environment in .venv with requirements.txt;
#  3. the ONNX Runtime shared library, taken from the onnxruntime wheel, at .deps/lib;
#  4. a release build of the plugins and tools;
#  5. the plugins linked into the user's GStreamer plugin folder, so gst-inspect-1.0 finds them;
#  6. .deps/env.sh, to source for GST_PLUGIN_PATH, ORT_DYLIB_PATH and PATH.
# Works as root and as a user with sudo; skips whatever is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

APT_PACKAGES=(
  pkg-config build-essential
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-plugins-bad gstreamer1.0-nice libgstreamer-plugins-bad1.0-dev
  libturbojpeg0-dev libzmq3-dev
  python3 python3-venv python3-pip
  chromium chromium-driver openssl
)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages: present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  # A fresh machine: the toolchain from rustup (Debian's own cargo is older than the 1.92 the
  # GStreamer bindings need). I2I_NO_RUSTUP=1 refuses this and asks instead.
  if [ "${I2I_NO_RUSTUP:-0}" != 1 ]; then
    log "no Rust toolchain found: installing the stable toolchain with rustup into ~/.cargo"
    command -v curl >/dev/null 2>&1 || {
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
    }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "no Rust toolchain found: install one with rustup (https://rustup.rs), Rust 1.92 or newer, then run this again"
  exit 1
fi

# Python environment. A venv that cannot be created (python3-venv missing on an unusual
# image) is reported, not silently replaced by a system-wide install.
REQ_HASH=$(sha256sum requirements.txt | cut -c1-16)
if [ ! -f .venv/.req-$REQ_HASH ]; then
  if [ ! -x .venv/bin/python ]; then
    log "creating Python environment in .venv"
    python3 -m venv .venv
  fi
  log "installing Python packages (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  rm -f .venv/.req-*
  touch .venv/.req-$REQ_HASH
else
  log "Python packages: present"
fi

# ONNX Runtime: the wheel carries the C library; link it at a fixed place.
mkdir -p .deps/lib
ORT_LIB=$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
if [ -z "$ORT_LIB" ]; then
  log "libonnxruntime.so not found in the onnxruntime wheel under .venv"
  exit 1
fi
ln -sf "$ORT_LIB" .deps/lib/libonnxruntime.so
export ORT_DYLIB_PATH="$ROOT/.deps/lib/libonnxruntime.so"

log "building the plugins and tools (cargo build --release)"
cargo build --release --workspace --quiet

# The libraries' names before they followed their crates (libgstzmqmsgpack.so is now
# libgstzmqsink.so, libgsti2iwebrtc.so libgstwebrtci2i.so). An old build's copy left in
# target/release, or an old set-up's link, would register the same elements a second time.
OLD_LIBS=(libgstzmqmsgpack.so libgsti2iwebrtc.so)
for lib in "${OLD_LIBS[@]}"; do
  rm -f "target/release/$lib"
done

# Link the plugins where gst-inspect-1.0 looks by default. I2I_SKIP_USER_PLUGINS=1 skips it
# (for a second checkout on the same account, whose plugins must not shadow the first's).
PLUGIN_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/gstreamer-1.0/plugins"
if [ "${I2I_SKIP_USER_PLUGINS:-0}" != 1 ]; then
  mkdir -p "$PLUGIN_DIR"
  for lib in "${OLD_LIBS[@]}"; do
    # Only the links this script made: a file of that name that is not a link into a
    # target/release stays (and is reported).
    if [ -L "$PLUGIN_DIR/$lib" ]; then
      case "$(readlink "$PLUGIN_DIR/$lib")" in
        */target/release/"$lib") rm -f "$PLUGIN_DIR/$lib" ;;
      esac
    fi
    [ ! -e "$PLUGIN_DIR/$lib" ] || log "warning: $PLUGIN_DIR/$lib is not a link set-up made; remove it if it is an old copy of this project's plugin"
  done
  for lib in libgsti2i.so libgstzmqsink.so libgstwebrtci2i.so; do
    ln -sf "$ROOT/target/release/$lib" "$PLUGIN_DIR/$lib"
  done
fi

cat > .deps/env.sh <<ENV
# Source this file: . .deps/env.sh
export GST_PLUGIN_PATH="$ROOT/target/release\${GST_PLUGIN_PATH:+:\$GST_PLUGIN_PATH}"
export ORT_DYLIB_PATH="$ROOT/.deps/lib/libonnxruntime.so"
export GST_REGISTRY="$ROOT/.deps/gst-registry.bin"
export PATH="$ROOT/target/release:$ROOT/.venv/bin:\$PATH"
ENV
# A checkout that skips the user's plugin folder (I2I_SKIP_USER_PLUGINS=1) keeps skipping it
# in later set-ups, and does not load from it either: the plugins linked there belong to
# another checkout, and one built under other library names would register the same
# elements beside this checkout's (GStreamer keeps the user folder's).
if [ "${I2I_SKIP_USER_PLUGINS:-0}" = 1 ]; then
  SYSTEM_PLUGINS=$(pkg-config --variable=pluginsdir gstreamer-1.0)
  cat >> .deps/env.sh <<ENV
export I2I_SKIP_USER_PLUGINS=1
export GST_PLUGIN_SYSTEM_PATH="$SYSTEM_PLUGINS"
ENV
fi

# Demo and test models, generated locally (nothing is downloaded at run time).
if [ -f scripts/make_models.py ]; then
  .venv/bin/python scripts/make_models.py --out models --quiet
fi

log "ready: plugins linked into $PLUGIN_DIR; for other shells: . .deps/env.sh"
