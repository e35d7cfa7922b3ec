"""Encode/decode pairs between the datasets users see and what the stores hold.

Book prices and sizes are stored as exact int32 ticks where every value of an array comes
back bit for bit (``kernels.ticks``), else as float64. Ticks halve the bytes to read and,
with Blosc's byte shuffle, compress 3.4x better than float64; decoding them in one numba
pass is 2.3x as fast as decoding float64 (docs/performance.md, "Store format").

On disk a ticked array is int32 with ``_FillValue`` (empty levels) and the CF attribute
``scale_factor``, so any netCDF/CF reader (plain ``xarray.open_zarr``) gets the prices
back; ``gpu_risk_ticks`` records how they are exact: ``{"divisor": d}`` (decimal data:
``q / d``, which CF's ``q * (1/d)`` can miss by one unit in the last place) or
``{"multiplier": s}`` (``q * s``, as CF decodes). gpu_risk decodes by that record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import xarray as xr

from .errors import InputError
from .kernels.ticks import TICK_FILL, from_ticks_cpu, to_ticks_cpu
from .schema import MARGIN_MODES

TICKS_ATTR = "gpu_risk_ticks"
TICKED_VARS = ("bid_price", "ask_price", "bid_size", "ask_size")
DECIMAL_DIVISORS = tuple(float(10**k) for k in range(10))

Spec = tuple[float, float]  # (divisor, multiplier); divisor 0 means: multiply


def _sample_multipliers(values: np.ndarray) -> list[float]:
    """Tick sizes a sample of the data suggests: its smallest positive step, and that step
    rounded to 1..8 significant digits."""
    flat = values.ravel()
    sample = flat[:: max(1, flat.size // 65_536)]
    sample = np.unique(sample[np.isfinite(sample)])
    steps = np.diff(sample)
    steps = steps[steps > 0]
    if not steps.size:
        return []
    step = float(steps.min())
    return [step] + sorted({float(f"{step:.{p}g}") for p in range(1, 9)} - {0.0})


def candidates(values: np.ndarray, hint: float | None = None) -> list[Spec]:
    """Encodings to try, cheapest integers first: decimal divisors, then tick sizes."""
    specs: list[Spec] = [(d, 0.0) for d in DECIMAL_DIVISORS]
    multipliers = ([hint] if hint else []) + _sample_multipliers(values)
    specs += [(0.0, m) for m in multipliers if m > 0 and np.isfinite(m)]
    return specs


def _encode(values: np.ndarray, spec: Spec) -> tuple[np.ndarray, int]:
    """(int32 ticks of ``values`` under ``spec``, flat index of the first value that does not
    round-trip or -1)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    ticks = np.empty(values.shape, dtype=np.int32)
    return ticks, int(to_ticks_cpu(values, spec[0], spec[1], ticks))


def try_encode(values: np.ndarray, spec: Spec) -> np.ndarray | None:
    """``values`` as int32 ticks under ``spec``, or None if one value would not round-trip."""
    ticks, bad = _encode(values, spec)
    return ticks if bad < 0 else None


class TickChooser:
    """Narrows the candidate encodings of one array fed piece by piece (an importer's
    spooled chunks): :attr:`spec` is then one under which every piece round-trips."""

    def __init__(self, hint: float | None = None):
        self.hint = hint
        self.specs: list[Spec] | None = None

    def feed(self, values: np.ndarray) -> None:
        if self.specs is None:
            self.specs = candidates(values, self.hint)
        self.specs = [s for s in self.specs if try_encode(values, s) is not None]

    @property
    def spec(self) -> Spec | None:
        return self.specs[0] if self.specs else None


def choose_spec(pieces: Callable[[], Iterable[np.ndarray]], hint: float | None = None) -> Spec | None:
    """What :class:`TickChooser` fed every piece would choose (the first candidate of the
    first piece under which every piece round-trips), for pieces that can be read again
    (``pieces()`` yields them anew): each candidate stops at the first value or piece it
    fails on, so only the winner encodes everything, where the chooser tries every
    candidate on every piece."""
    first = next(iter(pieces()), None)
    if first is None:
        return None
    decimal = [(d, 0.0) for d in DECIMAL_DIVISORS]
    for spec in decimal:  # candidates() in its order, the tick sizes sampled only when needed
        if all(try_encode(piece, spec) is not None for piece in pieces()):
            return spec
    for spec in candidates(first, hint)[len(decimal):]:
        if all(try_encode(piece, spec) is not None for piece in pieces()):
            return spec
    return None


def choose(values: np.ndarray, hint: float | None = None) -> tuple[Spec, np.ndarray] | None:
    """The first candidate encoding of ``values`` that is exact, with the ticks; or None."""
    if values.size == 0:
        return None
    for spec in candidates(values, hint):
        ticks = try_encode(values, spec)
        if ticks is not None:
            return spec, ticks
    return None


def tick_attrs(spec: Spec) -> dict:
    """The attribute that records an encoding (xarray must not see ``scale_factor`` while
    writing, or it would scale the ticks again: :func:`cf_scale_factor` is added after)."""
    divisor, multiplier = spec
    return {TICKS_ATTR: {"divisor": divisor} if divisor > 0 else {"multiplier": multiplier}}


def cf_scale_factor(attrs: dict) -> float | None:
    """The CF ``scale_factor`` for a ticked array's attributes (None if not ticked)."""
    spec = spec_of(attrs)
    if spec is None:
        return None
    return (1.0 / spec[0]) if spec[0] > 0 else spec[1]


def spec_of(attrs: dict) -> Spec | None:
    record = attrs.get(TICKS_ATTR)
    if not isinstance(record, dict):
        return None
    if "divisor" in record:
        return float(record["divisor"]), 0.0
    return 0.0, float(record["multiplier"])


def encode_ticked(ds: xr.Dataset, names: Iterable[str] = TICKED_VARS,
                  hints: dict[str, float] | None = None) -> tuple[xr.Dataset, set[str]]:
    """``ds`` with each of ``names`` (in memory) replaced by exact int32 ticks where some
    encoding is exact; returns the dataset and the names encoded."""
    out, encoded = ds.copy(), set()
    for name in names:
        if name not in ds or ds[name].dtype.kind != "f" or ds[name].chunks is not None:
            continue
        found = choose(np.asarray(ds[name].values), (hints or {}).get(name))
        if found is None:
            continue
        spec, ticks = found
        attrs = {k: v for k, v in ds[name].attrs.items() if k not in ("scale_factor", TICKS_ATTR)}
        out[name] = xr.Variable(ds[name].dims, ticks, attrs | tick_attrs(spec))
        encoded.add(name)
    return out, encoded


def encode_with(ds: xr.Dataset, specs: dict[str, Spec], *, where: str = "") -> xr.Dataset:
    """Encode a slab's variables with encodings fixed in advance (a writer's template);
    a value that would not come back exactly raises instead of being rounded."""
    out = ds.copy()
    for name, spec in specs.items():
        if name not in ds:
            continue
        ticks, bad = _encode(ds[name].values, spec)
        if bad >= 0:
            raise ValueError(f"{name}{where}: value {np.ravel(ds[name].values)[bad]!r} is not exact in "
                             f"ticks {spec} (the writer's tick size is wrong)")
        out[name] = xr.Variable(ds[name].dims, ticks, ds[name].attrs)
    return out


def _decode_block(ticks, divisor, multiplier):
    out = np.empty(ticks.shape, dtype=np.float64)
    return from_ticks_cpu(np.ascontiguousarray(ticks), divisor, multiplier, out)


def decode_ticked(ds: xr.Dataset) -> xr.Dataset:
    """Float64 values of every variable stored as ticks (opened without CF masking and
    scaling), lazily where lazy: one fused pass per chunk, inside the chunk's read task."""
    out = ds
    for name, var in ds.data_vars.items():
        spec = spec_of(var.attrs)
        if spec is None or var.dtype.kind not in "iu":
            continue
        attrs = {k: v for k, v in var.attrs.items() if k not in ("scale_factor", "_FillValue", TICKS_ATTR)}
        data = var.data
        if hasattr(data, "map_blocks"):
            decoded = data.map_blocks(_decode_block, spec[0], spec[1], dtype=np.float64)
        else:
            decoded = _decode_block(np.asarray(data), *spec)
        if out is ds:
            out = ds.copy()
        out[name] = xr.Variable(var.dims, decoded, attrs)
    return out


__all__ = ["TICK_FILL", "TICKS_ATTR", "TickChooser", "choose", "decode_ticked", "encode_ticked",
           "encode_with", "tick_attrs"]


# margin_mode is stored as CF flag codes (uint8 with flag_values / flag_meanings) and read
# back as strings: decoding a million variable-length strings cost 0.2-0.3 s, about as much
# as the stress kernel's work on those accounts; codes decode in milliseconds. Stores holding
# strings (written by other tools, or before this encoding) are read as they are.
_UNKNOWN_MODE = 255  # anything else: decoded to "" and flagged qc_bad_margin_mode on validation
_MODE_TABLE = np.full(256, "", dtype="<U8")
_MODE_TABLE[: len(MARGIN_MODES)] = MARGIN_MODES


def _mode_codes(modes) -> np.ndarray:
    modes = np.asarray(modes)
    codes = np.full(modes.shape, _UNKNOWN_MODE, dtype=np.uint8)
    for code, name in enumerate(MARGIN_MODES):
        codes[modes == name] = code
    return codes


def _mode_names(codes) -> np.ndarray:
    return _MODE_TABLE[np.asarray(codes)]


def encode_margin_mode(ds: xr.Dataset) -> xr.Dataset:
    """``margin_mode`` as uint8 flag codes (0 cross, 1 isolated, 255 anything else)."""
    mode = ds.get("margin_mode")
    if mode is None or mode.dtype.kind not in "UTO":
        return ds
    codes = xr.apply_ufunc(_mode_codes, mode, dask="parallelized", output_dtypes=[np.uint8],
                           keep_attrs=False)
    attrs = dict(mode.attrs, flag_values=list(range(len(MARGIN_MODES))), flag_meanings=" ".join(MARGIN_MODES))
    return ds.assign(margin_mode=codes.assign_attrs(attrs))


def decode_margin_mode(ds: xr.Dataset) -> xr.Dataset:
    """Back to strings (``<U8``) where ``margin_mode`` holds flag codes; lazily where lazy."""
    mode = ds.get("margin_mode")
    if mode is None or mode.dtype.kind not in "iu" or "flag_meanings" not in mode.attrs:
        return ds
    if tuple(mode.attrs["flag_meanings"].split()) != MARGIN_MODES:
        raise InputError(f"margin_mode flag_meanings {mode.attrs['flag_meanings']!r}, expected "
                         f"{' '.join(MARGIN_MODES)!r}", store=ds.attrs.get("store"), variable="margin_mode")
    names = xr.apply_ufunc(_mode_names, mode, dask="parallelized", output_dtypes=[_MODE_TABLE.dtype],
                           keep_attrs=False)
    attrs = {k: v for k, v in mode.attrs.items() if k not in ("flag_values", "flag_meanings")}
    return ds.assign(margin_mode=names.assign_attrs(attrs))
