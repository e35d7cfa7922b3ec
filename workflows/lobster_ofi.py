"""Historical study on real data: level-1 OFI and mid-price changes on LOBSTER AAPL.

    python workflows/lobster_ofi.py [--data ../shared/data/real] [--out results/lobster_ofi]

Imports LOBSTER's 1-hour AAPL sample (2012-06-21, 09:30-10:30 New York, level 1) with
`gpu-risk import lobster`'s importer, computes the imbalance grid at 10 s buckets and
regresses the mid-price change of each bucket on its level-1 OFI, as Cont, Kukanov &
Stoikov (2014) do: over the whole hour and per half-hour window (their estimation
window), with the slope also expressed in ticks per share and scaled by the average
depth at the touch (their beta x AD). Prints a markdown table (docs/methodology.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from gpu_risk import store
from gpu_risk.imbalance import imbalance_grid
from gpu_risk.importers.lobster import import_lobster

TICK = 0.01


def regress(ofi: np.ndarray, dmid: np.ndarray) -> dict:
    ok = np.isfinite(ofi) & np.isfinite(dmid)
    x, y = ofi[ok], dmid[ok]
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.var(y - slope * x - intercept) / np.var(y)
    return {"buckets": int(x.size), "slope": slope, "intercept": intercept, "r2": r2}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/real")
    p.add_argument("--out", type=Path, default=Path("results/lobster_ofi"))
    p.add_argument("--bucket", default="10s")
    args = p.parse_args()
    src = args.data / "lobster_aapl_2012-06-21/bigfatwhale_1h_msg50_book1"
    book_path = args.out / "book.zarr"
    if book_path.exists():
        shutil.rmtree(book_path)
    args.out.mkdir(parents=True, exist_ok=True)
    import_lobster(src / "AAPL_2012-06-21_orderbook_50.csv", src / "AAPL_2012-06-21_message_50.csv",
                   "2012-06-21", "AAPL", book_path)
    book = store.open_book(book_path)
    grid = imbalance_grid(book, args.bucket).sel(instrument="AAPL").compute()
    ds = book["AAPL"].to_dataset().load()
    depth = float(((ds.bid_size.isel(level=0) + ds.ask_size.isel(level=0)) / 2).mean())
    ofi = grid.ofi.isel(level=0).values
    mid = grid.mid_price.values
    dmid = np.diff(mid, prepend=np.nan)
    times = pd.DatetimeIndex(grid.time.values)
    rows = [{"window (UTC)": f"{times[0] - pd.Timedelta(args.bucket):%H:%M}-{times[-1]:%H:%M}", **regress(ofi, dmid)}]
    for start in pd.date_range(times[0].floor("30min"), times[-1], freq="30min"):
        sel = (times > start) & (times <= start + pd.Timedelta("30min"))
        if sel.sum() > 10:
            rows.append({"window (UTC)": f"{start:%H:%M}-{start + pd.Timedelta('30min'):%H:%M}",
                         **regress(ofi[sel], dmid[sel])})
    table = pd.DataFrame(rows).set_index("window (UTC)")
    table["slope (ticks per 100 shares)"] = table["slope"] / TICK * 100
    table["beta x AD (ticks)"] = table["slope"] / TICK * depth
    print(f"AAPL 2012-06-21, {ds.sizes['time']:,} snapshots, {args.bucket} buckets, "
          f"average depth at the touch AD = {depth:,.0f} shares")
    shown = table.drop(columns=["intercept"])
    print("| " + " | ".join([shown.index.name, *shown.columns]) + " |")
    print("|" + "---|" * (len(shown.columns) + 1))
    for name, row in shown.iterrows():
        print("| " + " | ".join([name, *(f"{v:.4g}" for v in row)]) + " |")


if __name__ == "__main__":
    main()
