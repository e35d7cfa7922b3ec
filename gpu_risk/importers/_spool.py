"""Day-by-day writing of an importer's snapshots in bounded memory, appending to a store.

Importers produce snapshots in time order without knowing how many a day will hold; a
book day is written with its full time axis (``store.book_writer``), so the snapshots of
the current UTC day are spooled to disk in chunks and written when the day ends. Each day
appears in the store only once complete.

Appending: when the store already holds the instrument, new snapshots must start after
its last one (an overlap is an error: nothing is duplicated). If they start within the
store's last day, that day is rewritten with the old snapshots followed by the new ones:
into a sibling group first, swapped in only when complete (``store.replace_day``), so a
killed import loses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from .. import store
from ..coding import choose_spec
from ..errors import InputError

ORDER = ("bid_price", "bid_size", "ask_price", "ask_size")
DAY_NS = 86_400 * 10**9
# a day this small is written from memory in one pass (it is held twice meanwhile: its chunks
# and the joined arrays); larger days go through the region writer, a chunk at a time
WHOLE_DAY_BYTES = 16 << 20
# chunks of a day are held in memory up to this (a few minutes of a capture), spooled to disk
# beyond, so that an import's memory does not grow with its days
HELD_DAY_BYTES = WHOLE_DAY_BYTES


# Re-imports: the files a store was built from are recorded by content digest on its root,
# so importing the same bytes again is recognised and skipped (replaying them would be
# refused as overlapping, or, for diffs, lose the book's state)
IMPORTED_ATTR = "gpu_risk_imported_files"  # on the store's root: content digest -> what it was


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imported_files(out) -> dict:
    if not Path(str(out)).exists():
        return {}
    found = store.group_attrs(out).get(IMPORTED_ATTR)
    return dict(found) if isinstance(found, dict) else {}


def record_imported(out, files: dict) -> None:
    store.update_group_attrs(out, "", {IMPORTED_ATTR: {**imported_files(out), **files}})


class DaySpool:
    def __init__(self, out, instrument: str, levels: int, chunk_rows: int, attrs: dict,
                 optional_vars: tuple[str, ...] = ()):
        store._check_instrument_name(instrument)
        self.out, self.instrument, self.levels, self.chunk_rows = out, instrument, levels, chunk_rows
        self.attrs, self.optional = attrs, tuple(optional_vars)
        self.dir = Path(tempfile.mkdtemp(prefix="gpu_risk_spool_"))
        self.day: str | None = None
        self.days: list[str] = []
        self.snapshots = 0  # rows written, a rewritten day's old rows included
        self.added = 0  # new snapshots
        self.rewrite_day: str | None = None
        self.last_stored_ns: int | None = None
        self.stored_days: list[str] = []
        self.last_added_ns: int | None = None  # the last snapshot time added by this import
        if Path(str(out)).exists() and store.store_layout(out) == store.INSTRUMENT_ARRAYS:
            # the importers' resume and same-day rewrite work on day groups
            raise InputError("this book store holds instrument arrays; import into a day-group store, "
                             "then `gpu-risk migrate` it", store=str(out), instrument=instrument)
        if Path(str(out)).exists() and instrument in store.child_groups(out):
            for d in store.child_groups(out, instrument):
                if not store.DAY_NAME.match(d):
                    store.recover_day(out, f"{instrument}/{d.split('.')[0]}")
            self.stored_days = store.complete_days(out, instrument)
            if self.stored_days:
                last = store.open_day_dataset(out, f"{instrument}/{self.stored_days[-1]}")
                if last.sizes["level"] != levels:
                    raise InputError(f"the store holds {last.sizes['level']} levels, this import "
                                     f"{levels}", store=str(out), instrument=instrument)
                self.last_stored_ns = int(last["time"].values[-1].astype("datetime64[ns]").view(np.int64))
        self._start_day()

    def _start_day(self):
        self.times: list[np.ndarray] = []
        self.files: list = []  # the day's chunks: dicts of arrays in memory, or spooled .npz paths
        self.memory_bytes = 0
        # rows added since the last chunk, as pieces: no chunk-sized buffer is allocated (and
        # faulted in) for days that hold a few thousand rows
        self.pending: list[tuple[np.ndarray, np.ndarray, dict]] = []
        self.n = 0

    def _flush(self):
        """Every pending row to the day's chunks (its last chunk)."""
        self._chunk(self.n)

    def _chunk(self, rows: int) -> None:
        """The first ``rows`` pending rows become a chunk, the rest stay pending. Chunks are
        kept in memory while the day's stay under HELD_DAY_BYTES and spooled to disk beyond,
        so memory stays bounded for any day."""
        if rows:
            if len(self.pending) == 1:
                times, book, extras = self.pending[0]
            else:
                times = np.concatenate([piece[0] for piece in self.pending])
                book = np.concatenate([piece[1] for piece in self.pending], axis=1)
                extras = {k: np.concatenate([piece[2][k] for piece in self.pending]) for k in self.optional}
            self.pending = [(times[rows:], book[:, rows:], {k: v[rows:] for k, v in extras.items()})]
            self.n -= rows
            if self.n == 0:
                self.pending = []
            chunk = {"book": np.ascontiguousarray(book[:, :rows]), **{k: v[:rows].copy() for k, v in extras.items()}}
            self.memory_bytes += chunk["book"].nbytes
            if self.memory_bytes > HELD_DAY_BYTES:
                for i, held in enumerate(self.files):
                    if isinstance(held, dict):
                        self.files[i] = self._spill(held, i)
                self.files.append(self._spill(chunk, len(self.files)))
            else:
                self.files.append(chunk)
            self.times.append(times[:rows].copy())

    def _spill(self, chunk: dict, i: int) -> Path:
        path = self.dir / f"chunk{i}.npz"
        np.savez(path, **chunk)
        return path

    @staticmethod
    @contextlib.contextmanager
    def _read(held):
        """A chunk's arrays by name, held in memory or spooled."""
        if isinstance(held, dict):
            yield held
        else:
            with np.load(held) as data:
                yield data

    @staticmethod
    def _drop(held) -> None:
        if not isinstance(held, dict):
            held.unlink()

    def _write_day(self):
        self._flush()
        if not self.files:
            return
        time = np.concatenate(self.times).astype("datetime64[ns]")
        rewrite = self.day == self.rewrite_day
        suffix = ".new" if rewrite else ""
        # the day's exact tick encodings, from every spooled chunk (float64 where none is exact)
        def pieces(i: int):
            for held in self.files:
                with self._read(held) as data:
                    yield data["book"][i]

        specs = {name: choose_spec(lambda i=i: pieces(i)) for i, name in enumerate(ORDER)}
        if time.size * self.levels * 32 <= WHOLE_DAY_BYTES:  # small: one write, no empty template first
            # joined chunk by chunk, each released once copied: the day is held about once
            book = np.empty((4, time.size, self.levels))
            extras = {name: np.empty(time.size) for name in self.optional}
            row = 0
            for i, held in enumerate(self.files):
                with self._read(held) as data:
                    n = data["book"].shape[1]
                    book[:, row:row + n] = data["book"]
                    for name in self.optional:
                        extras[name][row:row + n] = data[name]
                self._drop(held)
                self.files[i] = None
                row += n
            store.write_book_day_whole(self.out, self.instrument, self.day, time, book, self.chunk_rows, self.attrs,
                                       extras, suffix, specs)
            self._finish_day(time, rewrite)
            return
        writer = store.book_writer(self.out, self.instrument, self.day, time, self.levels,
                                   self.chunk_rows, extra_attrs=self.attrs,
                                   optional_vars=self.optional, suffix=suffix,
                                   ticks=specs)
        start = 0
        for held in self.files:
            with self._read(held) as data:
                block = data["book"]
                slab = xr.Dataset({name: (("time", "level"), block[i]) for i, name in enumerate(ORDER)})
                for name in self.optional:
                    slab[name] = ("time", data[name])
            writer.write(start, slab)
            start += block.shape[1]
            self._drop(held)
        writer.close()
        self._finish_day(time, rewrite)

    def _finish_day(self, time, rewrite: bool) -> None:
        assert self.day is not None
        if rewrite:
            store.replace_day(self.out, f"{self.instrument}/{self.day}", f"{self.instrument}/{self.day}.new")
        self.snapshots += int(time.size)
        self.days.append(self.day)

    def _preload(self, day: str):
        """Spool the stored day first: the rewritten day holds old and new snapshots."""
        old = store.open_day_dataset(self.out, f"{self.instrument}/{day}")
        missing = [name for name in self.optional if name not in old]
        if missing:
            raise InputError(f"the stored day lacks {missing}, which this import writes",
                             store=str(self.out), instrument=self.instrument)
        self.rewrite_day = day
        self.day = day
        n = old.sizes["time"]
        for start in range(0, n, self.chunk_rows):
            part = old.isel(time=slice(start, start + self.chunk_rows)).load()
            block = np.stack([part[name].values for name in ORDER])
            extras = {name: part[name].values for name in self.optional}
            self._append(part["time"].values.astype("datetime64[ns]").view(np.int64), block, extras)

    def add(self, time_ns: np.ndarray, block: np.ndarray, extras: dict | None = None,
            where: str | None = None) -> None:
        """Append snapshots: ``time_ns`` (n,) int64 in time order, ``block`` (4, n, levels)
        in the order bid_price, bid_size, ask_price, ask_size, ``extras`` the optional
        variables (n,). Time going backwards is an error naming ``where`` (file and line):
        never a day written twice."""
        if time_ns.size == 0:
            return
        previous = self.last_added_ns
        back = np.flatnonzero(np.diff(time_ns) < 0)
        bad = None
        if previous is not None and time_ns[0] < previous:
            bad = (int(time_ns[0]), previous)
        elif back.size:
            bad = (int(time_ns[back[0] + 1]), int(time_ns[back[0]]))
        if bad is not None:
            raise InputError(f"event time goes backwards{' at ' + where if where else ''}: "
                             f"{np.datetime64(bad[0], 'ns')} after {np.datetime64(bad[1], 'ns')}",
                             store=str(self.out), instrument=self.instrument)
        self.last_added_ns = int(time_ns[-1])
        if self.day is None and self.last_stored_ns is not None:
            if time_ns[0] <= self.last_stored_ns:
                raise InputError(
                    f"the store already holds {self.instrument} up to "
                    f"{np.datetime64(self.last_stored_ns, 'ns')}; this import starts at "
                    f"{np.datetime64(int(time_ns[0]), 'ns')} (overlapping or repeated input)",
                    store=str(self.out), instrument=self.instrument)
            first_day = store.day_key(np.datetime64(int(time_ns[0]), "ns"))
            if first_day == self.stored_days[-1]:
                self._preload(first_day)
        self._append(time_ns, block, extras or {})
        self.added += int(time_ns.size)

    def _append(self, time_ns, block, extras):
        days = time_ns // DAY_NS
        start = 0
        while start < time_ns.size:
            day = store.day_key(np.datetime64(int(time_ns[start]), "ns"))
            if self.day is not None and day != self.day:
                self._write_day()
                self._start_day()
            self.day = day
            stop = start + int(np.searchsorted(days[start:], days[start], side="right"))
            self.pending.append((time_ns[start:stop].copy(), block[:, start:stop].copy(),
                                 {name: extras[name][start:stop].copy() for name in self.optional}))
            self.n += stop - start
            start = stop
            while self.n >= self.chunk_rows:
                self._chunk(self.chunk_rows)

    def close(self) -> tuple[int, list[str]]:
        """Write the last day; returns (new snapshots, days written)."""
        try:
            if self.day is not None:
                self._write_day()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.added, self.days

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
