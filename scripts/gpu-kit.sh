#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Offline GPU kit: everything the GPU path needs, packed on a connected machine into checked chunks that fit
# any transfer medium, and unpacked on an air-gapped show machine or render node.
#
#   bash scripts/gpu-kit.sh pack --out DIR [--max-chunk-mb N] [--ort-wheel FILE | --ort-lib-dir DIR]
#                                [--no-cuda] [--with-tensorrt DIR] [--no-build] [--target-dir DIR]
#   bash scripts/gpu-kit.sh unpack DIR [--to DEST]
#
# pack gathers into DIR: the ONNX Runtime library of the onnxruntime-gpu wheel (1.31.1 from PyPI unless
# --ort-wheel names a wheel or --ort-lib-dir a folder holding libonnxruntime.so.* and its provider
# libraries) with its CUDA and TensorRT provider libraries; the CUDA 13 / cuDNN 9 runtime libraries it was built
# for, from their PyPI wheels (not with --no-cuda; pack checks that every library the CUDA provider needs is in
# the kit); TensorRT 10's runtime libraries for CUDA 13 (--with-tensorrt DIR: a folder holding them, from
# NVIDIA's TensorRT tar's lib/ or its tensorrt_cu13_libs wheels; PyPI has only a stub for them that
# downloads them at install time; about 1 GB more); the
# plugins, tools and engine-bench built for this machine's target (release; --no-build packs what is built,
# from --target-dir, default target/release);
# numpy and onnx wheels and the scripts that make the sd-turbo-shaped model on the target; the CLIP vocabulary.
# They go into one tar.gz cut into chunks of at most N MiB (default 60), with MANIFEST (sizes and SHA-256 of
# every chunk, of the whole and of every file inside) and SHA256SUMS (for sha256sum -c).
#
# unpack checks every chunk against the manifest (exit 1 naming the chunk that is missing, short or
# different), reassembles and checks the whole, extracts it to DEST (default DIR/kit) and prints the lines to
# paste into a shell:  export ORT_DYLIB_PATH=... / LD_LIBRARY_PATH=... / GST_PLUGIN_PATH=... / PATH=... /
# I2I_KIT=...   Then `bash "$I2I_KIT/scripts/gpu-bench.sh" --offline` runs the GPU benchmark without any
# download (docs/engine.md, "Offline GPU kit").
set -euo pipefail
CALLER=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# Paths on the command line are the caller's, not relative to the checkout.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }
ORT_GPU_VERSION=1.31.1
# onnxruntime-gpu 1.31 is built for CUDA 13 (its CUDA provider needs libcudart.so.13, libcublas(Lt).so.13,
# libcurand.so.10 and cuDNN 9; its TensorRT provider libnvinfer.so.10): the CUDA 13 wheels, whose names have
# no -cu12 suffix.
CUDA_WHEELS="nvidia-cudnn-cu13==9.* nvidia-cuda-runtime==13.* nvidia-cublas==13.* nvidia-curand nvidia-cufft"
PY_WHEELS="numpy onnx"
FORMAT="i2i-gpu-kit 1"

die() { echo "gpu-kit: $*" >&2; exit 1; }
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
python() {
  if [ -x "$ROOT/.venv/bin/python" ]; then "$ROOT/.venv/bin/python" "$@"; else python3 "$@"; fi
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

# Extracts the members of wheel $1 whose path matches the regex $2 (basename kept) into folder $3.
wheel_libs() {
  python - "$1" "$2" "$3" <<'PY'
import re, sys, zipfile, os, shutil
wheel, pattern, dest = sys.argv[1:]
n = 0
with zipfile.ZipFile(wheel) as z:
    for m in z.namelist():
        if re.search(pattern, m) and not m.endswith("/"):
            with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
if n == 0:
    sys.exit(f"gpu-kit: no file matching {pattern} in {wheel}")
PY
}

pip_download() {  # pip_download DEST SPEC...: Linux x86_64 CPython wheels, without their dependencies
  local dest=$1; shift
  local p plat=()
  for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do plat+=(--platform "${p}_x86_64"); done
  python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "${plat[@]}" --python-version "${KIT_PYTHON_VERSION:-3.11}" -d "$dest" "$@" \
    || die "pip download $* failed (this machine needs PyPI; the target does not)"
}

pack() {
  local out="" max_mb=60 ort_wheel="" ort_dir="" cuda=1 trt="" build=1 target=target/release
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out=$(abspath "$2"); shift 2 ;;
      --max-chunk-mb) max_mb=$2; shift 2 ;;
      --ort-wheel) ort_wheel=$(abspath "$2"); shift 2 ;;
      --ort-lib-dir) ort_dir=$(abspath "$2"); shift 2 ;;
      --no-cuda) cuda=0; shift ;;
      --with-tensorrt) trt=$(abspath "$2"); shift 2 ;;
      --no-build) build=0; shift ;;
      --target-dir) target=$(abspath "$2"); shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "pack: unknown argument '$1' (see --help)" ;;
    esac
  done
  [ -n "$out" ] || die "pack: --out DIR is required"
  [[ "$max_mb" =~ ^[1-9][0-9]*$ ]] || die "pack: --max-chunk-mb expects a whole number of MiB >= 1, found '$max_mb'"
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  [ -z "$(ls -A "$out")" ] || die "pack: $out is not empty (pack into a new folder)"
  KIT_WORK=$(mktemp -d)
  trap 'rm -rf "$KIT_WORK"' EXIT
  local work=$KIT_WORK
  local kit=$work/kit
  mkdir -p "$kit/lib" "$kit/bin" "$kit/plugins" "$kit/wheels" "$kit/scripts" "$kit/.deps/clip" "$work/dl"

  # ONNX Runtime (GPU build) and its provider libraries.
  if [ -n "$ort_dir" ]; then
    ls "$ort_dir"/libonnxruntime.so.* >/dev/null 2>&1 || die "pack: no libonnxruntime.so.* in $ort_dir"
    cp -L "$ort_dir"/libonnxruntime.so.* "$kit/lib/"
    cp -L "$ort_dir"/libonnxruntime_providers_*.so "$kit/lib/" 2>/dev/null || true
  else
    if [ -z "$ort_wheel" ]; then
      echo "gpu-kit: downloading onnxruntime-gpu==$ORT_GPU_VERSION" >&2
      pip_download "$work/dl" "onnxruntime-gpu==$ORT_GPU_VERSION"
      ort_wheel=$(ls "$work"/dl/onnxruntime_gpu-*.whl)
    fi
    [ -f "$ort_wheel" ] || die "pack: no wheel at $ort_wheel"
    wheel_libs "$ort_wheel" '^onnxruntime/capi/libonnxruntime(\.so\.|_providers_).*' "$kit/lib"
  fi
  local dylib
  dylib=$(cd "$kit/lib" && ls libonnxruntime.so.* | head -n1)

  if [ "$cuda" = 1 ]; then
    echo "gpu-kit: downloading the CUDA 13 / cuDNN 9 runtime wheels" >&2
    pip_download "$work/dl" $CUDA_WHEELS
  fi
  for w in "$work"/dl/nvidia_*.whl; do
    if [ ! -f "$w" ]; then continue; fi
    wheel_libs "$w" 'nvidia/[^/]+/lib/lib[^/]*\.so[^/]*$' "$kit/lib"
  done
  if [ -n "$trt" ]; then
    [ -d "$trt" ] || die "pack: --with-tensorrt $trt is not a folder"
    for w in "$trt"/tensorrt*libs*.whl; do
      if [ -f "$w" ]; then wheel_libs "$w" 'tensorrt_libs/lib[^/]*\.so[^/]*$' "$kit/lib"; fi
    done
    cp -L "$trt"/libnv*.so.* "$kit/lib/" 2>/dev/null || true
    ls "$kit"/lib/libnvinfer.so.* >/dev/null 2>&1 || die "pack: no libnvinfer.so.* in $trt (TensorRT's lib folder or its wheels)"
  fi

  # Every library a provider needs must be in the kit, but the driver's (libcuda.so.1) and the system's.
  if [ "$cuda" = 1 ]; then
    local lib need provs=libonnxruntime_providers_cuda.so
    [ -n "$trt" ] && provs="$provs libonnxruntime_providers_tensorrt.so"
    for lib in $provs; do
      [ -f "$kit/lib/$lib" ] || die "pack: $lib is not in the ONNX Runtime build packed (is it the GPU build?)"
      for need in $(readelf -d "$kit/lib/$lib" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        [ -f "$kit/lib/$need" ] || [ "$need" = libcuda.so.1 ] || ldconfig -p | grep -q "^\s*$need " \
          || die "pack: $lib needs $need, which none of the wheels packed provides (CUDA_WHEELS in $0)"
      done
    done
    [ -f "$kit/lib/libcudnn.so.9" ] || die "pack: libcudnn.so.9 (loaded by the CUDA provider) is not in the kit"
  fi

  # Plugins, tools and the benchmark, built for this machine's target.
  if [ "$build" = 1 ]; then
    cargo build --release --workspace --quiet
    cargo build --release -p gst-plugin-i2i --example engine-bench --quiet
  fi
  local f
  for f in "$target"/libgst*.so; do
    if [ -f "$f" ]; then cp "$f" "$kit/plugins/"; fi
  done
  for f in i2i-stats i2i-prompt i2i-web examples/engine-bench; do
    if [ -x "$target/$f" ]; then cp "$target/$f" "$kit/bin/"; fi
  done
  ls "$kit"/plugins/*.so >/dev/null 2>&1 || die "pack: no plugins in $target (build them, or drop --no-build)"

  # What makes the sd-turbo-shaped model on the target (numpy + onnx), and the benchmark script.
  pip_download "$kit/wheels" $PY_WHEELS "protobuf" "ml_dtypes" "typing_extensions"
  cp scripts/make_models.py scripts/gpu-bench.sh "$kit/scripts/"
  cp -r scripts/i2i_models "$kit/scripts/"
  rm -rf "$kit/scripts/i2i_models/__pycache__"
  local gz=.deps/clip/bpe_simple_vocab_16e6.txt.gz
  if [ ! -f "$gz" ]; then
    python -c "import sys; sys.path.insert(0, 'scripts'); from i2i_models import clip_vocab; from pathlib import Path; clip_vocab.bpe_gz_bytes(Path('.deps'))"
  fi
  cp "$gz" "$kit/.deps/clip/"

  # The manifest of the contents, the payload, the chunks.
  (cd "$kit" && find . -type f | sort | sed 's|^\./||' | while read -r p; do
     echo "file $p $(stat -c %s "$p") $(sha "$p")"; done) > "$work/contents"
  tar -C "$kit" -cf - . | gzip -1 > "$work/kit.tar.gz"
  split -b "$((max_mb * 1024 * 1024))" -d -a 3 "$work/kit.tar.gz" "$out/kit.tar.gz."
  {
    echo "$FORMAT"
    echo "created $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "max-chunk-mib $max_mb"
    echo "ort-dylib lib/$dylib"
    echo "payload kit.tar.gz $(stat -c %s "$work/kit.tar.gz") $(sha "$work/kit.tar.gz")"
    for f in "$out"/kit.tar.gz.*; do echo "chunk $(basename "$f") $(stat -c %s "$f") $(sha "$f")"; done
    cat "$work/contents"
  } > "$out/MANIFEST"
  (cd "$out" && sha256sum kit.tar.gz.* > SHA256SUMS)
  local n
  n=$(ls "$out"/kit.tar.gz.* | wc -l)
  echo "gpu-kit: $out: $n chunk(s) of at most $max_mb MiB, $(du -sh "$out" | cut -f1) in all; on the target: bash gpu-kit.sh unpack DIR" >&2
  cp "$0" "$out/gpu-kit.sh"
}

unpack() {
  local dir="" dest=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --to) dest=$(abspath "$2"); shift 2 ;;
      -h|--help) usage; exit 0 ;;
      -*) die "unpack: unknown argument '$1' (see --help)" ;;
      *) [ -z "$dir" ] || die "unpack: one folder only, found '$dir' and '$1'"; dir=$(abspath "$1"); shift ;;
    esac
  done
  [ -n "$dir" ] || die "unpack: the kit folder is required (unpack DIR [--to DEST])"
  local m=$dir/MANIFEST
  [ -f "$m" ] || die "unpack: $m is missing (is $dir a kit made by gpu-kit.sh pack?)"
  [ "$(head -n1 "$m")" = "$FORMAT" ] || die "unpack: $m is not a '$FORMAT' manifest"
  dest=${dest:-$dir/kit}
  local kind name size sum found bad=0
  while read -r kind name size sum; do
    [ "$kind" = chunk ] || continue
    if [ ! -f "$dir/$name" ]; then
      echo "gpu-kit: chunk $name is missing from $dir" >&2; bad=1; continue
    fi
    found=$(stat -c %s "$dir/$name")
    if [ "$found" != "$size" ]; then
      echo "gpu-kit: chunk $name has $found bytes, the manifest says $size: copy it again" >&2; bad=1; continue
    fi
    found=$(sha "$dir/$name")
    if [ "$found" != "$sum" ]; then
      echo "gpu-kit: chunk $name: SHA-256 $found does not match the manifest's $sum: copy it again" >&2; bad=1
    fi
  done < "$m"
  [ "$bad" = 0 ] || exit 1
  local chunks
  chunks=$(awk '$1 == "chunk" { print $2 }' "$m")
  [ -n "$chunks" ] || die "unpack: $m lists no chunks"
  read -r _ _ size sum < <(grep '^payload ' "$m")
  found=$(cd "$dir" && cat $chunks | sha256sum | cut -d' ' -f1)
  [ "$found" = "$sum" ] || die "unpack: the reassembled kit's SHA-256 $found does not match the manifest's $sum"
  mkdir -p "$dest"
  (cd "$dir" && cat $chunks) | tar -C "$dest" -xzf -
  dest=$(cd "$dest" && pwd)
  while read -r kind name size sum; do
    [ "$kind" = file ] || continue
    [ "$(sha "$dest/$name")" = "$sum" ] || die "unpack: $dest/$name differs from the manifest after extraction"
  done < "$m"
  local dylib
  dylib=$(awk '$1 == "ort-dylib" { print $2 }' "$m")
  echo "gpu-kit: unpacked to $dest; paste these lines into the shell that runs the pipelines:" >&2
  echo "export ORT_DYLIB_PATH=$dest/$dylib"
  echo "export LD_LIBRARY_PATH=$dest/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  echo "export GST_PLUGIN_PATH=$dest/plugins\${GST_PLUGIN_PATH:+:\$GST_PLUGIN_PATH}"
  echo "export PATH=$dest/bin:\$PATH"
  echo "export I2I_KIT=$dest"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  unpack) shift; unpack "$@" ;;
  -h|--help|"") usage; [ -n "${1:-}" ] ;;
  *) die "unknown command '$1' (pack or unpack; see --help)" ;;
esac
