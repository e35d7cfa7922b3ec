"""How far cascades and contagion move under each depth model beyond the visible levels.

    python benchmarks/depth_models.py [--data data/demo] [--every 1h]

On the first day of the demo store (synthesised into a temporary directory when absent:
one day, 4 perpetuals x 50,000 snapshots, 50,000 accounts), runs `gpu_risk.cascade` and
`gpu_risk.contagion` every ``--every`` for shocks of -10 %, -5 %, +5 % and +10 % with no
depth model (SPEC), the flat model (0.002) and the fitted power model (the market's
``depth_exponent``), and prints per instrument the median amplification over the times,
the share of cascades that ran past the visible book, and each run's wall time on this
machine. The figures are in docs/methodology.md ("Depth beyond the visible levels").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from gpu_risk import cascade, contagion, open_book, open_market, open_positions

SHOCKS = [-0.1, -0.05, 0.05, 0.1]
SETTINGS = (("none", None), ("flat 0.002", 0.002), ("power (fitted)", "power"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--every", default="1h")
    args = parser.parse_args()
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if not (data / "book.zarr").exists():
            data = Path(tmp)
            subprocess.run([sys.executable, "-m", "gpu_risk.cli", "synth", "--out", str(data), "--days", "1",
                            "--instruments", "4", "--accounts", "50000", "--snapshots-per-day", "50000"],
                           check=True, capture_output=True)
        book = open_book(data / "book.zarr")
        first = min(str(np.datetime64(book[n].time.values[0], "D")) for n in book.children)
        book = open_book(data / "book.zarr", start=first, end=first)
        book = book.map_over_datasets(lambda ds: ds.load())
        market = open_market(data / "market.zarr", first)
        positions = open_positions(data / "positions.zarr", first, market=market).load()
        print(f"# {machine()}; {data} day {first}, shocks {SHOCKS}, every {args.every}")
        print("| model | instrument | cascade -5 % | cascade -10 % | cascade +10 % | past the book | "
              "contagion -5 % | contagion -10 % | contagion +10 % | seconds (cascade / contagion) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, setting in SETTINGS:
            t0 = time.perf_counter()
            ca = cascade(book, positions, market, args.every, SHOCKS, depth_extrapolation=setting).compute()
            t1 = time.perf_counter()
            co = contagion(book, positions, market, args.every, SHOCKS, depth_extrapolation=setting)
            t2 = time.perf_counter()
            for name in ca.instrument.values:
                a, b = ca.amplification.sel(instrument=name), co.amplification.sel(instrument=name)
                med = lambda x, s: float(x.sel(initial_shock=s).median())  # noqa: E731
                print(f"| {label} | {name} | {med(a, -0.05):.3f} | {med(a, -0.1):.3f} | {med(a, 0.1):.3f} | "
                      f"{100 * float(ca.book_exhausted.sel(instrument=name).mean()):.0f} % | {med(b, -0.05):.3f} | "
                      f"{med(b, -0.1):.3f} | {med(b, 0.1):.3f} | {t1 - t0:.1f} / {t2 - t1:.1f} |")


if __name__ == "__main__":
    main()
