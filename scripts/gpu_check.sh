#!/usr/bin/env bash
# The GPU check in one command (scripts/benchmarks/gpu.py says what it runs and checks):
#
#   bash scripts/gpu_check.sh [gpu.py options]                  # on a GPU machine: full sizes, ≤ 8 min
#   bash scripts/gpu_check.sh --cpu-smoke                       # here: tiny sizes on the CPU
#
# Python is $PYTHON (default python3). When it cannot import shardlab's dependencies and .whl/
# (made by scripts/gpu_wheels.sh, carried to the machine) holds wheels for its version, they are
# installed with pip --no-index into $GPU_CHECK_SITE (default /tmp/site), which goes first on
# PYTHONPATH; with no such wheels and $PYTHON unset, .venv/bin/python is used if it exists. System
# libraries in .whl/gpu-syslibs.tar.xz that the machine cannot load go on LD_LIBRARY_PATH. The
# repository root is on PYTHONPATH, so shardlab need not be installed. Results go to $OUT (default
# gpu_check_out): gpu_check.json, gpu_check.log, eval.log and the stages' folders.
# Exit status: gpu.py's (0 all stages passed, 1 a stage failed, 2 bad options), 3 when the
# dependencies cannot be imported.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEEL_DIR=${WHEEL_DIR:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
OUT_DIR=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
MODULES=torch,pytorch_lightning,torchrl,tensordict,procgen,gym3,minigrid,gymnasium,omegaconf,pygame,tensorboard,sklearn
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

importable() { "$PY" -c "import warnings; warnings.simplefilter('ignore'); import $MODULES" >/dev/null 2>&1; }

if ! importable; then
  tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])' 2>/dev/null || echo none)
  if compgen -G "$WHEEL_DIR/*-$tag-*.whl" >/dev/null; then
    echo "gpu_check: installing $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels from $WHEEL_DIR into $SITE" >&2
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target "$SITE" "$WHEEL_DIR"/*.whl; then
      echo "gpu_check: pip could not install $WHEEL_DIR" >&2
      exit 3
    fi
    # torchrl's wheel also installs top-level benchmarks/, scripts/ and sota-* folders; they would
    # shadow this repository's scripts/benchmarks package
    rm -rf "$SITE/benchmarks" "$SITE/scripts" "$SITE/sota-check" "$SITE/sota-implementations"
    export PYTHONPATH="$SITE:$PYTHONPATH"
  elif [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
  fi
fi
# system libraries procgen's Qt needs (libGL, GLib and their dependencies): those this machine
# cannot load come from .whl/gpu-syslibs.tar.xz (see gpu_wheels.sh) through LD_LIBRARY_PATH
if [ -f "$WHEEL_DIR/gpu-syslibs.tar.xz" ]; then
  libs="$SITE-syslibs"
  rm -rf "$libs" && mkdir -p "$libs/all" "$libs/use"
  tar -C "$libs/all" -xJf "$WHEEL_DIR/gpu-syslibs.tar.xz"
  missing=$("$PY" - "$libs/all" <<'PY'
import ctypes, os, sys
for name in sorted(os.listdir(sys.argv[1])):
    if ".so" in name:
        try:
            ctypes.CDLL(name)
        except OSError:
            print(name)
PY
)
  if [ -n "$missing" ]; then
    for name in $missing; do ln -sf "$libs/all/$name" "$libs/use/$name"; done
    export LD_LIBRARY_PATH="$libs/use${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu_check: using carried $(echo $missing | tr '\n' ' ')" >&2
  fi
fi
if ! importable; then
  echo "gpu_check: $PY cannot import the dependencies ($MODULES):" >&2
  "$PY" -c "import $MODULES" 2>&1 | tail -3 >&2
  echo "gpu_check: run scripts/gpu_wheels.sh where a registry is reachable and bring .whl/ along, or set PYTHON" >&2
  exit 3
fi
"$PY" - <<'PY' >&2
import importlib.metadata as md, sys, torch
names = ["pytorch-lightning", "torchrl", "tensordict", "numpy", "procgen-mirror", "minigrid", "gymnasium", "omegaconf"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "?"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"gpu_check: python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} ({gpu}), "
      + ", ".join(f"{n} {version(n)}" for n in names))
PY
exec "$PY" scripts/benchmarks/gpu.py --out "$OUT_DIR" "$@"
