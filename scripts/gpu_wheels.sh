#!/usr/bin/env bash
# Download the wheels that the GPU check (scripts/gpu_check.sh) needs on a machine whose Python has
# torch, Lightning, TensorBoard, scikit-learn, matplotlib, numpy, pillow, pyyaml, tqdm, filelock
# and cloudpickle but none of the packages below, and no package registry. Run it here (with
# network), then carry .whl/ to that machine; gpu_check.sh installs it with pip --no-index.
#
#   scripts/gpu_wheels.sh                                  # cp312 wheels into .whl/
#   WHEEL_PYTHON=3.11 WHEEL_DIR=/tmp/whl311 scripts/gpu_wheels.sh   # the same set for another Python
#
# Exactly one version of each package, no dependency resolution (--no-deps): the list below is
# the closure of what `import shardlab` + the PPO, DT and classifier trainers + `shardlab eval`
# import, minus what that machine already has. Fails when the folder exceeds 60 MiB (the carried
# folder's limit) or a download fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_PYTHON=${PIP_PYTHON:-python3}   # the interpreter whose pip downloads (any version)
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}  # the target machine's Python
WHEEL_DIR=${WHEEL_DIR:-.whl}
MAX_MIB=${MAX_MIB:-60}

# name==version  why it is needed
WHEELS=(
  # torchrl 0.12.0 is the release built against torch 2.11 (the GPU machine has 2.11.0+cu130): its
  # wheel dates from 2026-04-27, when 2.11.0 (2026-03-23) was the current torch and before 2.12.0
  # (2026-05-07), and every libtorch symbol its C++ extension (_torchrl.so) imports is defined by
  # the torch 2.11.0 wheel's libraries (checked with nm); 0.14.x needs symbols 2.11 lacks.
  # Used for GAE, ClipPPOLoss, ProbabilisticActor/ValueOperator (trainers/ppo.py).
  "torchrl==0.12.0"
  # torchrl 0.12.0 requires tensordict>=0.12.0,<0.13.0; 0.12.4 is that line's last fix release.
  # Its _C.so links no libtorch (pybind only), so it is not tied to a torch build.
  "tensordict==0.12.4"
  "pyvers==0.2.3"             # required by torchrl and tensordict (version-dispatch helpers)
  "orjson==3.13.0"            # required by tensordict on Python < 3.13 (its JSON backend)
  "omegaconf==2.4.0"          # configs (trainers/config.py); 2.4 vendors its ANTLR runtime
  "procgen-mirror==0.10.7"    # the maze env (import name procgen), cp312 manylinux build
  "gym3==0.3.3"               # procgen's vectorised-env API (ProcgenGym3Env)
  "gym==0.26.2"               # procgen registers its gym envs on import (sdist only: built here)
  "gym-notices==0.1.0"        # imported by gym
  "cffi==1.17.1"              # gym3/procgen talk to the C++ env through cffi
  "pycparser==3.12"           # cffi parses procgen's C declarations with it
  "imageio==2.38.1"           # imported by gym3 (video recorder module)
  "gymnasium==1.4.0"          # MiniGrid envs (envs/minigrid.py, DT data, shardlab collect)
  "farama-notifications==0.0.6"  # imported by gymnasium
  "minigrid==3.2.0"           # DoorKey env for the decision-transformer data
  "pygame-ce==2.5.8"          # minigrid imports pygame at import time (slimmed below)
)
# Not shipped although some metadata asks for them: importlib_metadata (tensordict/torchrl fall back
# to it only when importlib.metadata is missing), imageio-ffmpeg, glfw and moderngl (gym3's
# video writing and interactive window, never imported here), hoptorch (torchrl >= 0.13 only).

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf "$WHEEL_DIR"
mkdir -p "$WHEEL_DIR"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
for spec in "${WHEELS[@]}"; do
  if [ "$spec" = "gym==0.26.2" ]; then
    # no wheel on PyPI: build the pure-Python wheel from the sdist (py3-none-any, any Python)
    "$PIP_PYTHON" -m pip wheel --quiet --no-deps --no-cache-dir --wheel-dir "$build" "$spec"
    mv "$build"/gym-0.26.2-*.whl "$WHEEL_DIR"/
  else
    "$PIP_PYTHON" -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
      --python-version "$WHEEL_PYTHON" --implementation cp "${PLATFORMS[@]}" -d "$WHEEL_DIR" "$spec" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  fi
done

# procgen-mirror (47 MiB: libenv, bundled Qt/ICU, every game's assets) and pygame-ce (12 MiB) leave
# too little room under the limit; pygame's docs, examples and tests (4.7 MiB, never imported) are
# dropped from its wheel, and their lines from its RECORD, so pip installs it as usual.
"$PIP_PYTHON" - "$WHEEL_DIR"/pygame_ce-2.5.8-*.whl <<'PY'
import os, sys, zipfile
path = sys.argv[1]
drop = ("pygame/docs/", "pygame/examples/", "pygame/tests/")
slim = path + ".slim"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if info.filename.startswith(drop):
            continue
        data = src.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not line.startswith(drop)).encode()
        dst.writestr(info, data)
os.replace(slim, path)
PY

# procgen's bundled Qt links the system's libGL.so.1 and GLib, which a headless CUDA image may lack
# (nothing is drawn with GL: Qt only needs the symbols). Debian's builds of them and their own
# dependencies (glibc >= 2.34 suffices) go into gpu-syslibs.tar.xz; gpu_check.sh puts on
# LD_LIBRARY_PATH only those that the machine cannot load itself. SYSLIBS=0 leaves them out.
SYSLIB_DEBS=(libgl1 libglx0 libglvnd0 libx11-6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 libglib2.0-0 libpcre2-8-0)
SYSLIBS_SO=(libGL.so.1 libGLX.so.0 libGLdispatch.so.0 libX11.so.6 libxcb.so.1 libXau.so.6 libXdmcp.so.6 libbsd.so.0
            libmd.so.0 libglib-2.0.so.0 libgthread-2.0.so.0 libpcre2-8.so.0)
if [ "${SYSLIBS:-1}" != 0 ]; then
  mkdir -p "$build/debs" "$build/root" "$build/lib"
  if ! (cd "$build/debs" && apt-get download "${SYSLIB_DEBS[@]}" >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$build/debs" && apt-get download "${SYSLIB_DEBS[@]}" >/dev/null 2>&1) \
      || { echo "gpu_wheels: apt-get download ${SYSLIB_DEBS[*]} failed (SYSLIBS=0 skips them)" >&2; exit 1; }
  fi
  for deb in "$build"/debs/*.deb; do dpkg -x "$deb" "$build/root"; done
  for so in "${SYSLIBS_SO[@]}"; do
    cp -L "$build/root/usr/lib/x86_64-linux-gnu/$so" "$build/lib/$so"
  done
  (cd "$build/debs" && ls *.deb) > "$build/lib/SOURCES.txt"
  tar -C "$build/lib" -cJf "$WHEEL_DIR/gpu-syslibs.tar.xz" .
fi

count=$(find "$WHEEL_DIR" -mindepth 1 -maxdepth 1 -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels in $WHEEL_DIR, found $count" >&2
  exit 1
fi
ls -l "$WHEEL_DIR" | awk 'NR > 1 { printf "%10.2f MiB  %s\n", $5 / 1048576, $9 }'
[ -f "$WHEEL_DIR/gpu-syslibs.tar.xz" ] && echo "  gpu-syslibs.tar.xz: $(tar -tJf "$WHEEL_DIR/gpu-syslibs.tar.xz" | grep -c '\.so')" \
  "libraries from $(tar -xJOf "$WHEEL_DIR/gpu-syslibs.tar.xz" ./SOURCES.txt | tr '\n' ' ')"
bytes=$(du -sb "$WHEEL_DIR" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "total: $count wheels$([ -f "$WHEEL_DIR/gpu-syslibs.tar.xz" ] && echo " + system libraries"), $mib MiB in $WHEEL_DIR (limit $MAX_MIB MiB)"
if awk -v b="$bytes" -v m="$MAX_MIB" 'BEGIN { exit !(b > m * 1048576) }'; then
  echo "gpu_wheels: $WHEEL_DIR is over $MAX_MIB MiB" >&2
  exit 1
fi
