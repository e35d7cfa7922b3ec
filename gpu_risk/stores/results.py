"""The results store: one group per as-of date, one subgroup per result group of the families.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from ..errors import InputError
from . import direct
from .days import (
    COMPLETE,
    MANIFEST,
    PathLike,
    _local_group_document,
    _open_root,
    check_manifest,
    child_groups,
    complete_days,
    day_key,
    ensure_store,
    group_attrs,
    is_complete,
    is_sealed,
    manifest_problems,
    mark_complete,
    open_day_dataset,
    update_group_attrs,
    write_day_dataset,
    write_day_in_memory,
)


def results_days(path: PathLike) -> list[str]:
    if not Path(str(path)).exists():
        return []
    _open_root(path, "results")
    return complete_days(path)


FINGERPRINTS = "gpu_risk_fingerprints"


def write_results_day(path: PathLike, date: Any, families: dict[str, xr.Dataset],
                      chunks: dict[str, dict[str, int]] | None = None,
                      fingerprints: dict[str, str] | None = None) -> None:
    """Write one day's results, one group per family (``chunks[family]``: Zarr chunk sizes
    by dim; one chunk by default); the day becomes visible (complete) only after every
    family is written. Lazy datasets are computed here, on the active Dask scheduler.

    ``fingerprints`` (workflow family -> what made its results): with them, the groups of
    families not written now are kept (a day can gain a family, or have one recomputed,
    without losing the others) and the day records the fingerprints; without, the day is
    written afresh. A partial day from a killed run is never complete, so it is redone."""
    ensure_store(path, "results")
    key = day_key(date)
    keep = fingerprints is not None and is_complete(path, key)
    previous = results_fingerprints(path, key) if keep else {}
    if keep:
        update_group_attrs(path, key, {COMPLETE: False, "date": key})
    elif _local_group_document(path, "") is not None:  # a local store: without zarr's event loop
        direct.new_group(Path(str(path)), key, {COMPLETE: False, "date": key})
    else:
        zarr.open_group(str(path), path=key, mode="w", zarr_format=3).attrs.update({COMPLETE: False, "date": key})
    for family, ds in families.items():
        # computed already (the local schedulers' imbalance): chunks encoded here, on threads
        if not write_day_in_memory(ds, path, f"{key}/{family}", (chunks or {}).get(family)):
            write_day_dataset(ds, path, f"{key}/{family}", (chunks or {}).get(family))
    if fingerprints is not None:
        update_group_attrs(path, key, {FINGERPRINTS: {**previous, **fingerprints}})
    mark_complete(path, key)


def results_fingerprints(path: PathLike, date: Any) -> dict[str, str]:
    """The fingerprint of each family a complete results day holds ({} if none recorded, or
    if a chunk of the day is missing, truncated or foreign: a damaged day is recomputed)."""
    key = day_key(date)
    if not is_complete(path, key):
        return {}
    attrs = group_attrs(path, key)
    if not is_sealed(path, key, attrs) and manifest_problems(path, key, attrs.get(MANIFEST)):
        return {}
    found = attrs.get(FINGERPRINTS)
    return dict(found) if isinstance(found, dict) else {}


RUN_STAGES = "gpu_risk_stages"


def record_run_stages(path: PathLike, date: Any, stages: dict) -> None:
    """Record where a complete day's run spent its time on the day's group (the report
    shows it); written after the day is complete, as it includes the writing."""
    update_group_attrs(path, day_key(date), {RUN_STAGES: stages})


def run_stages(path: PathLike) -> dict[str, dict]:
    """The recorded time breakdown of each complete day that has one."""
    out = {}
    for key in results_days(path):
        stages = group_attrs(path, key).get(RUN_STAGES)
        if isinstance(stages, dict):
            out[key] = stages
    return out


def check_results_day(path: PathLike, key: str) -> None:
    """Raise an :class:`InputError` naming the first chunk missing or unreadable in a results
    day changed since it was written (a deleted family group counts: its chunks are gone)."""
    attrs = group_attrs(path, key)
    if is_sealed(path, key, attrs):
        return
    try:
        check_manifest(path, key, attrs)
    except InputError as exc:
        raise InputError(f"{exc.problem}; `gpu-risk run` recomputes a damaged results day",
                         store=str(path)) from None


def open_results(path: PathLike, families: Iterable[str] | None = None) -> xr.DataTree:
    """The complete days of a results store as a DataTree ``/<date>/<family>``. A day
    changed since it was written is checked first: a missing or damaged chunk is an error
    naming it (it would read as the fill value)."""
    nodes: dict[str, xr.Dataset] = {}
    for key in results_days(path):
        check_results_day(path, key)
        for family in child_groups(path, key):
            if families is None or family in families:
                nodes[f"/{key}/{family}"] = open_day_dataset(path, f"{key}/{family}")
    tree = xr.DataTree.from_dict(nodes)
    tree.attrs = {"store": str(path)}
    return tree
