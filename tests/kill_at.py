"""Run the gpu-risk command line and SIGKILL it at the n-th call of a named function.

    python tests/kill_at.py gpu_risk.stores.results.mark_complete 2 run workflow.yaml

The kill-and-resume tests use it to kill a run at a known place (here: after a day's
results are written, before the day is marked complete); the product has no hook for it.
"""

import importlib
import os
import signal
import sys


def main() -> None:
    target, count, *args = sys.argv[1:]
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    calls = 0

    def killed_at_the_nth_call(*a, **k):
        nonlocal calls
        calls += 1
        if calls >= int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **k)

    setattr(module, name, killed_at_the_nth_call)
    from gpu_risk.cli import app

    sys.argv = ["gpu-risk", *args]
    app()


if __name__ == "__main__":
    main()
