#!/usr/bin/env bash
# One GPU session on a machine with a CUDA GPU, nvcc and a CUDA build of torch (no network needed):
#   1. install wheels carried in .whl/ (e.g. diffusers on an image without it) into /tmp/site;
#   2. build the CUDA extension for this GPU's compute capability (pip install -e, no build isolation);
#   3. run the tests that need the extension or a GPU (TRITON_INTERPRET=0: Triton compiles for the GPU);
#   4. run benchmarks.gpu_validation (the stages named in $STAGES, default all; the video stage measures
#      the architectures named in $VAES, comma-separated, in that order: default all).
# Logs and results go to $OUT (default build/gpu_session). Usage: bash scripts/gpu_session.sh, e.g.
#   SKIP_TESTS=1 STAGES=video VAES="Cosmos 1.0,Mochi 1" bash scripts/gpu_session.sh
set -u
OUT=${OUT:-build/gpu_session}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi -L
$PY -c "import sys, torch, triton, diffusers; print(sys.version.split()[0], 'torch', torch.__version__, 'triton',
triton.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" || exit 1
arch=$($PY -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
start=$(date +%s)
# BUILD_CUDA=0 reuses an extension already in decinv_fast/ (e.g. carried from an earlier call)
DECINV_BUILD_CUDA=${BUILD_CUDA:-1} DECINV_CUDA_ARCHS=$arch MAX_JOBS=${MAX_JOBS:-16} \
    $PY -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
echo "extension installed (sm_$arch) in $(( $(date +%s) - start )) s"
cp decinv_fast/_C.cpython-*.so "$OUT/" 2>/dev/null
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    TRITON_INTERPRET=0 $PY -m pytest -q -p no:cacheprovider -m "requires_cuda or requires_ext" \
        tests/test_cuda_ext.py tests/test_triton_ops.py tests/test_engine.py 2>&1 | tee "$OUT/tests.log" | tail -30
fi
# every stage unless STAGES names some (about 9 minutes on an H100); BUDGET: seconds after which the
# video stage starts no new run
args=(--budget "${BUDGET:-900}")
[ -n "${STAGES:-}" ] && args+=(--only $STAGES)
if [ -n "${VAES:-}" ]; then
    IFS=, read -r -a vaes <<< "$VAES"
    args+=(--vaes "${vaes[@]}")
fi
PYTHONUNBUFFERED=1 $PY -m benchmarks.gpu_validation "${args[@]}" 2>&1 | tee "$OUT/gpu_validation.log"
cp benchmarks/results/gpu_validation.json "$OUT/" 2>/dev/null
true
