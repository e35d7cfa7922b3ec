"""``python -m gpu_risk.cuda_worker SCHEDULER [options]``: dask-cuda's ``dask cuda worker``
as a module, which is what a job scheduler's worker command runs (dask-jobqueue starts
``python -m <worker_command>``; dask-cuda has its CLI only as ``dask cuda worker``)."""

from __future__ import annotations

import sys


def main() -> None:
    from dask_cuda.cli import cuda  # noqa: PLC0415  (the GPU extra)

    cuda(["worker", *sys.argv[1:]], prog_name="gpu_risk.cuda_worker")


if __name__ == "__main__":
    main()
