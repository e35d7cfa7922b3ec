import os

import numpy as np
import pytest
import xarray as xr
from hypothesis import settings

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("nightly", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def make_book(n=50, levels=5, start="2026-01-05T10:00", tick=0.5, seed=0) -> xr.Dataset:
    """A small valid book: strictly monotone ladders, positive sizes, sorted times."""
    rng = np.random.default_rng(seed)
    mid_ticks = 200 + np.cumsum(rng.integers(-2, 3, size=n))
    bid_ticks = mid_ticks[:, None] - 1 - np.arange(levels)[None, :] * 2
    ask_ticks = mid_ticks[:, None] + 1 + np.arange(levels)[None, :] * 2
    time = np.datetime64(start, "ns") + np.sort(rng.integers(0, 10**9, size=n)).astype("timedelta64[ns]") * 7200
    return xr.Dataset(
        {"bid_price": (("time", "level"), bid_ticks * tick),
         "ask_price": (("time", "level"), ask_ticks * tick),
         "bid_size": (("time", "level"), rng.uniform(0.1, 5, size=(n, levels)).round(3)),
         "ask_size": (("time", "level"), rng.uniform(0.1, 5, size=(n, levels)).round(3))},
        coords={"time": time, "level": np.arange(1, levels + 1)},
    )


MARKET_SPEC = {
    "date": "2026-01-05",
    "assets": {"USDT": {"price": 1.0, "haircut": 0.0, "beta": 0.0},
               "BTC": {"price": 50_000.0, "haircut": 0.05, "beta": 1.0},
               "ETH": {"price": 2_000.0, "haircut": 0.17, "beta": 1.2}},
    "instruments": {
        "BTCUSDT": {"kind": "linear", "underlying": "BTC", "mark_price": 50_000.0,
                    "brackets": [[0, 0.004, 0], [50_000, 0.005, 50], [250_000, 0.01, 1_300],
                                 [1_000_000, 0.025, 16_300]]},
        "BTCUSD_PERP": {"kind": "inverse", "underlying": "BTC", "mark_price": 50_010.0,
                        "brackets": [[0, 0.005, 0]]},
        "BTC-C-55000": {"kind": "option", "underlying": "BTC", "mark_price": 1_200.0, "strike": 55_000,
                        "expiry": "2026-03-27", "call_put": "call", "implied_vol": 0.55},
    },
}


@pytest.fixture
def market():
    from gpu_risk.store import market_from_dict

    return market_from_dict(MARKET_SPEC)


def make_positions(n=20, seed=1) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    inst = ["BTCUSDT", "BTCUSD_PERP", "BTC-C-55000"]
    position = rng.normal(0, 1, size=(n, 3)) * np.array([1.0, 50_000.0, 2.0])
    position[rng.random((n, 3)) < 0.3] = 0.0
    entry = np.where(position != 0, np.array([50_000.0, 49_000.0, 1_100.0]) * rng.uniform(0.95, 1.05, (n, 3)), np.nan)
    mode = np.where(rng.random(n) < 0.3, "isolated", "cross").astype(object)
    iso = np.where((mode == "isolated")[:, None] & (position != 0), 1_000.0, 0.0)
    return xr.Dataset(
        {"balance": (("account", "asset"), rng.uniform(-1000, 10_000, size=(n, 3))),
         "position": (("account", "instrument"), position),
         "entry_price": (("account", "instrument"), entry),
         "margin_mode": ("account", mode),
         "isolated_margin": (("account", "instrument"), iso)},
        coords={"account": np.arange(n), "asset": ["USDT", "BTC", "ETH"], "instrument": inst},
    )


def synthetic_store(out, *, days=2, instruments=2, accounts=100, snapshots_per_day=300, levels=3) -> dict:
    """A small synthetic dataset written under ``out``; its summary (paths, days, ...), as
    `gpu-risk synth --json` prints it."""
    from gpu_risk.synth import SynthConfig, synth

    return synth(SynthConfig(out=str(out), days=days, instruments=instruments, accounts=accounts,
                             snapshots_per_day=snapshots_per_day, levels=levels))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A synthetic dataset of 2 days x 4 instruments x 3000 accounts (written once)."""
    from gpu_risk.synth import SynthConfig, synth

    out = tmp_path_factory.mktemp("synth")
    return synth(SynthConfig(out=str(out), days=2, instruments=4, accounts=3000, levels=5,
                             snapshots_per_day=6000, book_chunk_rows=2048, account_chunk_rows=1024))


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.cupy)])
def backend(request):
    """Every reference test runs on the numba kernel and, where a GPU exists, the CUDA one."""
    if request.param == "gpu":
        from gpu_risk.backend import gpu_available

        ok, why = gpu_available()
        if not ok:
            pytest.skip(why)
    return request.param
