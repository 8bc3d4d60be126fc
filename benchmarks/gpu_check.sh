#!/usr/bin/env bash
# Runs benchmarks/gpu_check.py on a machine with one GPU, as the project's GPU machine needs it:
# that image has torch and torchvision but not pydantic (nor open_clip), so the wheels that
# ../shared/gpu/fetch-wheels.sh put in .whl/ (carried along with the working tree) are
# installed into /tmp/site first, when that folder exists. Results go to $OUT (default
# ./gpu_check): gpu_check.json and gpu_check.md. Extra arguments go to gpu_check.py.
#
#   bash ../shared/gpu/fetch-wheels.sh open_clip_torch ftfy wcwidth regex tqdm   # here, once
#   bash benchmarks/gpu_check.sh                                   # there: the device command
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-./gpu_check}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lwrcli without installing it
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
