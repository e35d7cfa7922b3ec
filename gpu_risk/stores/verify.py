"""``gpu-risk verify``: every complete day of a store checked against what was written.

Two checks per day group (or instrument of arrays): its chunk files against the manifest
recorded when it was completed (a chunk missing, truncated or grown, or one nobody wrote),
and every chunk read back, which checks the CRC-32C each chunk carries (written by this
version; older stores' chunks are only decoded)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import zarr

from .book import book_instruments
from .book_arrays import is_instrument_arrays
from .days import (
    MANIFEST,
    STORE_KIND,
    UNREADABLE_METADATA,
    PathLike,
    chunk_region,
    complete_days,
    manifest_problems,
)


def _groups(path: PathLike, kind: str) -> list[tuple[str, bool]]:
    """(group, is an instrument's arrays) of every complete day of the store."""
    if kind != "book":
        return [(d, False) for d in complete_days(path)]
    out = []
    for inst in book_instruments(path):
        if is_instrument_arrays(path, inst):
            out.append((inst, True))
        else:
            out += [(f"{inst}/{d}", False) for d in complete_days(path, inst)]
    return out


def _arrays(group: zarr.Group, prefix: str = ""):
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            yield f"{prefix}{name}", node
        elif isinstance(node, zarr.Group):
            yield from _arrays(node, f"{prefix}{name}/")


def _read_every_chunk(where: str, array: zarr.Array) -> tuple[int, list[str]]:
    grid = [range(-(-s // c)) if s else range(0) for s, c in zip(array.shape, array.chunks)]
    problems, n = [], 0
    for index in itertools.product(*grid):
        n += 1
        try:
            array[chunk_region(array, index)]
        except Exception as exc:  # a damaged chunk fails in the codec that meets it
            key = "/".join(map(str, index)) or "0"
            problems.append(f"{where}: chunk {key} cannot be read ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})")
    return n, problems


def verify_store(path: PathLike) -> dict[str, Any]:
    """Check every complete day of the store at ``path``: {"kind", "groups", "chunks",
    "problems": one line per damaged chunk or group}."""
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    kind = str(dict(root.attrs).get(STORE_KIND, "unknown"))
    groups = _groups(path, kind)
    problems: list[str] = []
    chunks = 0
    for group, arrays_layout in groups:
        where = f"{Path(str(path))}/{group}"
        try:
            node = zarr.open_group(str(path), path=group, mode="r", zarr_format=3)
            attrs = dict(node.attrs)
            problems += manifest_problems(path, group, attrs.get(MANIFEST), extra_ok=arrays_layout)
            for name, array in _arrays(node):
                n, bad = _read_every_chunk(f"{where}/{name}", array)
                chunks += n
                problems += bad
        except UNREADABLE_METADATA as exc:
            problems.append(f"{where}: unreadable Zarr metadata ({type(exc).__name__}: {exc})")
    return {"store": str(path), "kind": kind, "groups": len(groups), "chunks": chunks, "problems": problems}
