"""LOBSTER orderbook + message files into a book store.

Orderbook file (no header): 4 L columns repeating ask_price_i, ask_size_i, bid_price_i,
bid_size_i; prices are dollars x 10000; empty levels hold the dummy prices 9999999999 (ask)
and -9999999999 (bid) with size 0, stored as NaN with size 0. Row n is the book after
message n; the message file's first column is the time in seconds after local midnight
(America/New_York), stored as UTC. Files are read in chunks, so any size fits in memory.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import xarray as xr

from .. import store
from ..errors import InputError

DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
PRICE_SCALE = 10_000.0
NEW_YORK = ZoneInfo("America/New_York")


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def lobster_times(message_csv: Path, date: str) -> np.ndarray:
    """UTC datetime64[ns] of every message (seconds after New York midnight)."""
    try:
        seconds = pd.read_csv(message_csv, header=None, usecols=[0], dtype=np.float64)[0].to_numpy()
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read LOBSTER message times: {exc}", store=str(message_csv)) from exc
    midnight = dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), NEW_YORK)
    origin = np.datetime64(int(midnight.timestamp() * 1e9), "ns")
    # seconds carry nanosecond decimals: round, not truncate, to the nanosecond
    return origin + np.round(seconds * 1e9).astype(np.int64).astype("timedelta64[ns]")


def _book_slab(rows: np.ndarray, levels: int, path: Path, first_row: int) -> xr.Dataset:
    if rows.shape[1] != 4 * levels:
        raise InputError(f"expected {4 * levels} columns, found {rows.shape[1]}", store=str(path),
                         index=first_row)
    ask_p, ask_q, bid_p, bid_q = (rows[:, j::4].astype(np.float64) for j in range(4))
    ask_p = np.where(ask_p == DUMMY_ASK, np.nan, ask_p / PRICE_SCALE)
    bid_p = np.where(bid_p == DUMMY_BID, np.nan, bid_p / PRICE_SCALE)
    return xr.Dataset({"bid_price": (("time", "level"), bid_p), "ask_price": (("time", "level"), ask_p),
                       "bid_size": (("time", "level"), bid_q), "ask_size": (("time", "level"), ask_q)})


def import_lobster(orderbook_csv, message_csv, date: str, instrument: str, out,
                   chunk_rows: int = store.BOOK_CHUNK_ROWS) -> dict:
    """Import one LOBSTER day; returns a summary. The day becomes visible in the store only
    when complete, and opening it validates every snapshot."""
    orderbook_csv, message_csv = Path(orderbook_csv), Path(message_csv)
    time = lobster_times(message_csv, date)
    n_book = _count_rows(orderbook_csv)
    if n_book != time.size:
        raise InputError(f"orderbook has {n_book} rows but the message file {time.size}",
                         store=str(orderbook_csv))
    first = pd.read_csv(orderbook_csv, header=None, nrows=1)
    if first.shape[1] % 4:
        raise InputError(f"{first.shape[1]} columns is not a multiple of 4", store=str(orderbook_csv))
    levels = first.shape[1] // 4
    writer = store.book_writer(out, instrument, date, time, levels, chunk_rows,
                               extra_attrs={"source": f"LOBSTER {orderbook_csv.name}"})
    start = 0
    for chunk in pd.read_csv(orderbook_csv, header=None, chunksize=chunk_rows, dtype=np.int64):
        writer.write(start, _book_slab(chunk.to_numpy(), levels, orderbook_csv, start))
        start += len(chunk)
    writer.close()
    return {"instrument": instrument, "date": date, "snapshots": int(time.size), "levels": levels,
            "first_time": str(time[0]), "last_time": str(time[-1]), "out": str(out)}
