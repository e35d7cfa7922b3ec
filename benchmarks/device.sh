#!/usr/bin/env bash
# One session on a lent GPU machine (no network): install what its image lacks from wheels
# carried in .whl/ (see docs/operations.md), install gpu_risk, then run what is asked:
#   bash benchmarks/device.sh gputests   # pytest -m cupy: every CUDA kernel against the shared references
#   bash benchmarks/device.sh tests      # the whole suite with the GPU visible (backend auto -> GPU)
#   bash benchmarks/device.sh bench      # benchmarks/gpu.py, then the families' benchmarks' GPU sections
#   bash benchmarks/device.sh batch      # benchmarks/batch.py --demo with the CPU and with the GPU
# Logs go to $OUT (or ./device-logs).
set -uo pipefail
LOGS=${OUT:-device-logs}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . >/dev/null || exit 1
export PYTHONPATH=/tmp/site
# the checkout's gpu_risk/ must not shadow the installed package (kernels/ is mapped into it),
# in this process or in the ones it starts (CLI tests, Dask workers): Python's safe-path mode
export PYTHONSAFEPATH=1
PY=python3
status=0
for step in "$@"; do
  case $step in
    info)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
      $PY -c "import sys, numpy, numba, cupy, xarray, dask, zarr; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'xarray', xarray.__version__, 'dask', dask.__version__, 'zarr', zarr.__version__)"
      ;;
    gputests)
      $PY -m pytest -m cupy -v -p no:cacheprovider -rs 2>&1 | tee "$LOGS/gputests.log" || status=1 ;;
    tests)
      $PY -m pytest -q -p no:cacheprovider -n 8 -rs --timeout 600 2>&1 | tee "$LOGS/tests.log" | tail -40 || status=1 ;;
    bench)
      $PY benchmarks/gpu.py 2>&1 | tee "$LOGS/bench_gpu.log" || status=1 ;;
    batch)
      for backend in cpu gpu; do
        $PY benchmarks/batch.py --demo --backend $backend 2>&1 | tee "$LOGS/batch_$backend.log" || status=1
      done ;;
    bench-families)
      for b in imbalance cascade; do
        $PY benchmarks/$b.py 2>&1 | tee "$LOGS/bench_$b.log" || status=1
      done ;;
    *) $PY "$step" 2>&1 | tee -a "$LOGS/other.log" || status=1 ;;
  esac
done
exit $status
