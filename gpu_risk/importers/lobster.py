"""LOBSTER orderbook + message files into a book store.

Orderbook file (no header): 4 L columns repeating ask_price_i, ask_size_i, bid_price_i,
bid_size_i; prices are dollars x 10000; empty levels hold the dummy prices 9999999999 (ask)
and -9999999999 (bid) with size 0, stored as NaN with size 0. Row n is the book after
message n; the message file's first column is the time in seconds after local midnight
(America/New_York), stored as UTC. Executions (message types 4 and 5) are kept as the
optional variable ``traded_volume``: the signed size each message executed (+ when a sell
limit order was hit, i.e. a buyer-initiated trade). The orderbook file is read in chunks;
the message file's four used columns (16 bytes a row) are read whole.
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
from ._spool import ORDER, DaySpool, file_digest, imported_files, record_imported

DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
PRICE_SCALE = 10_000.0
NEW_YORK = ZoneInfo("America/New_York")


def _count_rows(path: Path) -> int:
    """Lines of a text file, read in 8 MiB blocks (never the whole file at once)."""
    lines, last = 0, b""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (0 if last in (b"\n", b"") else 1)


EXECUTIONS = (4, 5)  # visible and hidden executions


def read_messages(message_csv: Path, date: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC datetime64[ns] of every message (seconds after New York midnight) and the signed
    volume it executed: + size for an execution of a sell limit order (direction -1, a
    buyer-initiated trade), - size for a buy limit order, 0 for other message types."""
    try:
        msg = pd.read_csv(message_csv, header=None, usecols=[0, 1, 3, 5],
                          dtype={0: np.float64, 1: np.int64, 3: np.float64, 5: np.int64})
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read the LOBSTER message file: {exc}", store=str(message_csv)) from exc
    return _message_arrays(msg, _new_york_midnight(date))


def _new_york_midnight(date: str) -> np.datetime64:
    midnight = dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), NEW_YORK)
    return np.datetime64(int(midnight.timestamp() * 1e9), "ns")


def _message_arrays(msg: pd.DataFrame, origin: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
    """(times, signed traded volume) of a block of message rows."""
    # seconds carry nanosecond decimals: round, not truncate, to the nanosecond
    time = origin + np.round(msg[0].to_numpy() * 1e9).astype(np.int64).astype("timedelta64[ns]")
    executed = np.isin(msg[1].to_numpy(), EXECUTIONS)
    traded = np.where(executed, -msg[5].to_numpy() * msg[3].to_numpy(), 0.0)
    return time, traded


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
    """Import one LOBSTER file pair; returns a summary. The day becomes visible in the store
    only when complete, and opening it validates every snapshot. A later file of the same
    instrument (e.g. the afternoon of the same day) continues the stored book. A pair the
    store was already built from (the same bytes) is skipped: ``"skipped": True``."""
    orderbook_csv, message_csv = Path(orderbook_csv), Path(message_csv)
    digest = f"{file_digest(orderbook_csv)}+{file_digest(message_csv)}"
    if digest in imported_files(out):
        return {"instrument": instrument, "date": date, "snapshots": 0, "levels": None, "skipped": True,
                "out": str(out)}
    # both files are read in blocks of chunk_rows rows, side by side: memory stays bounded
    # whatever their size (the row counts are compared first, by a streaming line count)
    n_book, n_msg = _count_rows(orderbook_csv), _count_rows(message_csv)
    if n_book == 0:
        raise InputError("the orderbook file is empty: no snapshot to import", store=str(orderbook_csv))
    if n_book != n_msg:
        raise InputError(f"orderbook has {n_book} rows but the message file {n_msg}",
                         store=str(orderbook_csv))
    origin = _new_york_midnight(date)
    first = pd.read_csv(orderbook_csv, header=None, nrows=1)
    if first.shape[1] % 4:
        raise InputError(f"{first.shape[1]} columns is not a multiple of 4", store=str(orderbook_csv))
    levels = first.shape[1] // 4
    spool = DaySpool(out, instrument, levels, chunk_rows,
                     {"source": f"LOBSTER {orderbook_csv.name}", "size_units": "shares"},
                     optional_vars=("traded_volume",))
    start, first_time, time = 0, None, np.empty(0, dtype="datetime64[ns]")
    try:
        messages = pd.read_csv(message_csv, header=None, usecols=[0, 1, 3, 5], chunksize=chunk_rows,
                               dtype={0: np.float64, 1: np.int64, 3: np.float64, 5: np.int64})
        for chunk in pd.read_csv(orderbook_csv, header=None, chunksize=chunk_rows, dtype=np.int64):
            try:
                msg = next(messages)
            except (ValueError, pd.errors.ParserError) as exc:
                raise InputError(f"cannot read the LOBSTER message file: {exc}", store=str(message_csv),
                                 index=start) from exc
            time, traded = _message_arrays(msg, origin)
            first_time = time[0] if first_time is None else first_time
            slab = _book_slab(chunk.to_numpy(), levels, orderbook_csv, start)
            stop = start + len(chunk)
            spool.add(time.view(np.int64), np.stack([slab[name].values for name in ORDER]),
                      {"traded_volume": traded}, where=f"{message_csv}:{start + 1}")
            start = stop
    except BaseException:
        spool.discard()
        raise
    spool.close()
    if Path(str(out)).exists():
        record_imported(out, {digest: {"file": orderbook_csv.name, "instrument": instrument}})
    return {"instrument": instrument, "date": date, "snapshots": start, "levels": levels, "skipped": False,
            "first_time": str(first_time), "last_time": str(time[-1]) if time.size else "None", "out": str(out)}
