"""Day-by-day writing of an importer's snapshots in bounded memory.

Importers produce snapshots in time order without knowing how many a day will hold; a
book day is written with its full time axis (``store.book_writer``), so the snapshots of
the current UTC day are spooled to disk in chunks and written when the day ends. Each day
appears in the store only once complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from .. import store

ORDER = ("bid_price", "bid_size", "ask_price", "ask_size")
DAY_NS = 86_400 * 10**9


class DaySpool:
    def __init__(self, out, instrument: str, levels: int, chunk_rows: int, attrs: dict):
        store._check_instrument_name(instrument)
        self.out, self.instrument, self.levels, self.chunk_rows = out, instrument, levels, chunk_rows
        self.attrs = attrs
        self.dir = Path(tempfile.mkdtemp(prefix="gpu_risk_spool_"))
        self.day: str | None = None
        self.days: list[str] = []
        self.snapshots = 0
        self._start_day()

    def _start_day(self):
        self.times: list[np.ndarray] = []
        self.files: list[Path] = []
        self.buf = np.empty((4, self.chunk_rows, self.levels))
        self.buf_time = np.empty(self.chunk_rows, dtype=np.int64)
        self.n = 0

    def _flush(self):
        if self.n:
            path = self.dir / f"chunk{len(self.files)}.npy"
            np.save(path, self.buf[:, : self.n])
            self.files.append(path)
            self.times.append(self.buf_time[: self.n].copy())
            self.n = 0

    def _write_day(self):
        self._flush()
        if not self.files:
            return
        time = np.concatenate(self.times).astype("datetime64[ns]")
        writer = store.book_writer(self.out, self.instrument, self.day, time, self.levels,
                                   self.chunk_rows, extra_attrs=self.attrs)
        start = 0
        for path in self.files:
            block = np.load(path)
            writer.write(start, xr.Dataset({name: (("time", "level"), block[i])
                                            for i, name in enumerate(ORDER)}))
            start += block.shape[1]
            path.unlink()
        writer.close()
        self.snapshots += int(time.size)
        self.days.append(self.day)

    def add(self, time_ns: np.ndarray, block: np.ndarray) -> None:
        """Append snapshots: ``time_ns`` (n,) int64 in time order, ``block`` (4, n, levels)
        in the order bid_price, bid_size, ask_price, ask_size."""
        days = time_ns // DAY_NS
        start = 0
        while start < time_ns.size:
            day = store.day_key(np.datetime64(int(time_ns[start]), "ns"))
            if self.day is not None and day != self.day:
                self._write_day()
                self._start_day()
            self.day = day
            stop = start + int(np.searchsorted(days[start:], days[start], side="right"))
            while start < stop:
                take = min(stop - start, self.chunk_rows - self.n)
                self.buf[:, self.n:self.n + take] = block[:, start:start + take]
                self.buf_time[self.n:self.n + take] = time_ns[start:start + take]
                self.n += take
                start += take
                if self.n == self.chunk_rows:
                    self._flush()

    def close(self) -> tuple[int, list[str]]:
        """Write the last day; returns (snapshots written, days)."""
        try:
            if self.day is not None:
                self._write_day()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.snapshots, self.days

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
