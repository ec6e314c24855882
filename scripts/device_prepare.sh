#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what benchmarks/device_batch.py needs on a lent GPU machine, whose image has
# Python 3.12 with torch, accelerate, safetensors, pyyaml, rich, matplotlib and tensorboard but not pydantic, and
# which cannot see ../shared: pydantic's wheels for that Python, the CIFAR-10 JPEG archive and the pretrained
# ResNets (about 31 MB in all; the device tool's limit is 64 MiB with the repository). Run it here, then name
# .device in the run's carry (benchmarks/device_batch.py's docstring has the command).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
mkdir -p .device/whl .device/shared/data .device/shared/models
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
# the versions installed here, so the device runs what the tests ran
pins=$("$PY" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")))
PY
)
rm -f .device/whl/*.whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/whl $pins
cp "$SHARED/data/cifar10-jpeg.tar.gz" .device/shared/data/
cp -r "$SHARED/models/resnet-cifar10" .device/shared/models/
du -sh .device
