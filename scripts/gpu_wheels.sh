#!/usr/bin/env bash
# Download, here, the wheels the server's GPU tests need on the lent CUDA machine (Python 3.12,
# no network there; its image already has torch, numpy, safetensors, pytest, httpx, h11, anyio,
# prometheus-client, filelock, ...). They go to .whl/ (git-ignored through .git/info/exclude) and
# travel with the working tree; benchmarks/gpu_check.sh installs them from there.
#
#   bash scripts/gpu_wheels.sh && <device run with carry [".whl"]> bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_17 2014 1; do
  case $n in 2014) platforms+=(--platform manylinux2014_x86_64) ;; 1) platforms+=(--platform manylinux1_x86_64) ;;
    *) platforms+=(--platform "manylinux_${n}_x86_64") ;; esac
done
names="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
  uvicorn sqlalchemy greenlet alembic mako redis limits deprecated cachetools swagger-ui-bundle
  boto3 botocore s3transfer jmespath"
# The versions this checkout's venv runs (make install-dev), so the GPU run tests the same stack.
pins=()
for name in $names; do
  v=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  pins+=("$name${v:+==$v}")
done
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  --platform any -d .whl --no-deps "${pins[@]}"
du -sh .whl
