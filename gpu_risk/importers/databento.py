"""Databento MBP-10 CSV into a book store.

One row per book update with the top 10 levels after it: ``bid_px_NN``, ``ask_px_NN``,
``bid_sz_NN``, ``ask_sz_NN`` (NN = 00..09, decimal prices); ``ts_event`` (ISO 8601, UTC,
nanoseconds) is the snapshot time; ``symbol`` names the instrument (a file with several
symbols gives one instrument each). Empty levels (an empty field, or Databento's undefined
price 9223372036.854775807 when prices are printed as decimals) become NaN with size 0.
The order counts (``*_ct_NN``) and the update fields (action, side, price, size, flags,
sequence) are not stored. Read in chunks, so any size fits in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import store
from ..errors import InputError
from ._spool import DaySpool, file_digest, imported_files, record_imported

LEVELS = 10
UNDEF_PRICE = 9_223_372_036.0  # INT64_MAX x 1e-9, printed as a decimal price


def _columns(side: str, what: str) -> list[str]:
    return [f"{side}_{what}_{i:02d}" for i in range(LEVELS)]


REQUIRED = ["ts_event", "symbol"] + [c for s in ("bid", "ask") for w in ("px", "sz") for c in _columns(s, w)]


def _is_time(value: str) -> bool:
    try:
        np.datetime64(value, "ns")
        return True
    except ValueError:
        return False


def _numbers(chunk: pd.DataFrame, columns: list[str], path: Path, first_line: int,
             on_bad_rows: str, bad: list) -> np.ndarray:
    """The columns as float64. A field that is not a number is an error naming the file,
    line, column and value, or under ``on_bad_rows="flag"`` NaN (validation then flags the
    row: a filled level with no price) and listed in the report."""
    values = chunk[columns].apply(pd.to_numeric, errors="coerce")
    unparsed = values.isna().to_numpy() & chunk[columns].notna().to_numpy()
    if unparsed.any():
        rows, cols = np.nonzero(unparsed)
        for r, c in zip(rows, cols):
            where = (first_line + int(r), columns[int(c)], str(chunk[columns].iat[int(r), int(c)]))
            if on_bad_rows == "raise":
                raise InputError(f"column {where[1]!r} holds {where[2]!r}, not a number",
                                 store=str(path), variable=where[1], index=where[0],
                                 label=f"line {where[0]}", count=int(unparsed.sum()))
            bad.append(where)
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def import_databento(csv_path, out, chunk_rows: int = store.BOOK_CHUNK_ROWS,
                     on_bad_rows: str = "raise") -> dict:
    """Import an MBP-10 CSV; returns {instrument: {snapshots, days}} and, under
    ``on_bad_rows="flag"``, ``"bad_fields"``: (line, column, value) of every field that was
    not a number (stored as NaN, so that opening the store flags those rows). A file whose
    bytes the store was already built from is skipped: ``{"skipped_files": [path]}``."""
    csv_path = Path(csv_path)
    digest = file_digest(csv_path)
    if digest in imported_files(out):
        return {"skipped_files": [str(csv_path)]}
    try:
        header = pd.read_csv(csv_path, nrows=0).columns
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", store=str(csv_path), index=1) from exc
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"not an MBP-10 CSV: missing columns {missing[:4]}{'...' if len(missing) > 4 else ''}",
                         store=str(csv_path), index=1, label="line 1 (header)")
    if on_bad_rows not in ("raise", "flag"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'flag', not {on_bad_rows!r}")
    spools: dict[str, DaySpool] = {}
    bad: list[tuple[int, str, str]] = []
    first_line = 2
    try:
        for chunk in pd.read_csv(csv_path, chunksize=chunk_rows, usecols=REQUIRED):
            stamps = chunk["ts_event"].astype(str).str.removesuffix("Z").to_numpy()
            try:  # numpy keeps all nine decimals (pandas may parse to microseconds)
                t_ns = np.array(stamps, dtype="datetime64[ns]").view(np.int64)
            except ValueError:
                bad_row = next(i for i, v in enumerate(stamps) if not _is_time(v))
                raise InputError(f"ts_event {stamps[bad_row]!r} is not an ISO 8601 time",
                                 store=str(csv_path), variable="ts_event",
                                 index=first_line + bad_row, label=f"line {first_line + bad_row}") from None
            block = np.empty((4, len(chunk), LEVELS))
            for i, (side, what) in enumerate((("bid", "px"), ("bid", "sz"), ("ask", "px"), ("ask", "sz"))):
                block[i] = _numbers(chunk, _columns(side, what), csv_path, first_line, on_bad_rows, bad)
            for price, size in ((0, 1), (2, 3)):  # empty levels: no price, size 0
                empty = chunk[_columns("bid" if price == 0 else "ask", "px")].isna().to_numpy() | (
                    np.abs(block[price]) >= UNDEF_PRICE)
                block[price][empty] = np.nan
                block[size][empty] = 0.0
            symbols = chunk["symbol"].astype(str).to_numpy()
            for symbol in pd.unique(symbols):
                rows = np.flatnonzero(symbols == symbol)
                if symbol not in spools:
                    spools[symbol] = DaySpool(out, symbol, LEVELS, chunk_rows,
                                              {"source": f"Databento MBP-10 {csv_path.name}",
                                               "size_units": "venue units (shares or contracts)"})
                spools[symbol].add(t_ns[rows], block[:, rows])
            first_line += len(chunk)
    except InputError:
        for spool in spools.values():
            spool.discard()
        raise
    except (ValueError, pd.errors.ParserError) as exc:
        for spool in spools.values():
            spool.discard()
        raise InputError(f"malformed CSV after line {first_line}: {exc}", store=str(csv_path),
                         index=first_line) from exc
    result: dict[str, Any] = {}
    for symbol, spool in spools.items():
        snapshots, days = spool.close()
        result[symbol] = {"snapshots": snapshots, "days": days}
    if spools:
        record_imported(out, {digest: {"file": csv_path.name, "instrument": sorted(spools)}})
    if on_bad_rows == "flag":
        result["bad_fields"] = [list(b) for b in bad]
    return result
