"""Hostile inputs and broken environments: each ends in one line naming what and where,
a flag, or the right answer; never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gpu_risk.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def one_line_error(done, *parts):
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for part in parts:
        assert part in " ".join(done.stderr.split()), (part, done.stderr)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from conftest import synthetic_store

    return synthetic_store(tmp_path_factory.mktemp("attacks") / "d")


def test_garbage_metadata_in_a_book_day_is_one_line(small, tmp_path):
    import shutil

    book = tmp_path / "book.zarr"
    shutil.copytree(small["book"], book)
    (book / "ETHUSDT" / small["days"][0] / "bid_price" / "zarr.json").write_text("{not json")
    done = cli("validate", "--book", book)
    one_line_error(done, "ETHUSDT", small["days"][0], "unreadable Zarr metadata", "book.zarr")
    debug = cli("validate", "--book", book, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_python_tag_in_a_workflow_is_refused_in_one_line(small, tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: !!python/object/apply:os.system ['echo hacked']\n"
                  f"stores: {{positions: {small['positions']}, market: {small['market']}}}\n"
                  f"families: [liquidation]\noutput: {tmp_path / 'out.zarr'}\n")
    done = cli("run", wf)
    one_line_error(done, "python/object")
    assert "hacked" not in done.stdout


def test_a_results_day_with_garbage_metadata_is_recomputed(small, tmp_path):
    cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
           "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "scheduler": "sync",
           "backend": "cpu"}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    first = cli("run", wf, "--json")
    assert first.returncode == 0, first.stderr
    (tmp_path / "out.zarr" / small["days"][0] / "zarr.json").write_text("garbage")
    again = cli("run", wf, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["computed"] == [small["days"][0]]
    from gpu_risk import store

    assert store.results_days(tmp_path / "out.zarr") == small["days"]


def test_an_unexpected_failure_is_one_line_with_its_type(small, tmp_path):
    """A store path that is a file, not a directory: the environment's error, in one line."""
    not_a_dir = tmp_path / "file.zarr"
    not_a_dir.write_text("x")
    done = cli("validate", "--book", not_a_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "file.zarr" in done.stderr


def test_the_readme_example_runs_and_refuses_positions_from_the_future(tmp_path):
    """The README's Python example, as written, on a synthetic store of the demo's dates;
    then the same cascade with the latest positions (a day after the book) is refused."""
    import re
    from pathlib import Path

    import gpu_risk
    from gpu_risk.errors import InputError
    from gpu_risk.synth import SynthConfig, synth

    synth(SynthConfig(out=str(tmp_path / "data" / "demo"), days=3, instruments=2, accounts=200,
                      snapshots_per_day=600, levels=5))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "gpu_risk.cascade" in block)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    cascades = scope["cascades"].compute()
    assert cascades.attrs["positions_date"] == cascades.attrs["times_last_day"] == "2026-01-06"
    latest = gpu_risk.open_positions(tmp_path / "data/demo/positions.zarr", market=scope["market"])
    assert latest.attrs["date"] == "2026-01-07"
    with pytest.raises(InputError, match="from its future"):
        gpu_risk.cascade(scope["book"], latest, scope["market"], "1h", [-0.1])
    ahead = gpu_risk.cascade(scope["book"], latest, scope["market"], "1h", [-0.1], allow_lookahead=True)
    assert ahead.attrs["positions_date"] == "2026-01-07"


def test_a_scheduler_without_workers_fails_in_one_line_instead_of_waiting(small, tmp_path):
    """`gpu-risk run --scheduler ADDRESS` on a scheduler with no worker (none started, or all
    gone) fails after GPU_RISK_NO_WORKER_TIMEOUT seconds with one line; never hangs; the
    days finished before stay, the day in progress is not shown."""
    import time

    from gpu_risk import store

    bindir = Path(sys.executable).parent
    dask_cli = [str(bindir / "dask")] if (bindir / "dask").exists() else [sys.executable, "-m", "dask"]
    sched_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
               "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "backend": "cpu"}
        wf = tmp_path / "wf.yaml"
        wf.write_text(yaml.safe_dump(cfg))
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "run", str(wf), "--scheduler", address],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GPU_RISK_NO_WORKER_TIMEOUT": "3"})
        assert time.monotonic() - t0 < 90
        one_line_error(done, "no worker", address)
        assert not (tmp_path / "out.zarr").exists() or store.results_days(tmp_path / "out.zarr") == []

        # a worker that dies while the second day is computed (killed -9 by the run itself,
        # between the days, so that the moment is the same every time)
        worker = subprocess.Popen([*dask_cli, "worker", address, "--no-nanny", "--nthreads", "1",
                                   "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_then_run = ("import os, signal, sys\n"
                         "import gpu_risk.workflow as wf\n"
                         "original, calls = wf.compute_day, []\n"
                         "def compute_day(*a, **k):\n"
                         "    calls.append(1)\n"
                         "    if len(calls) == 2:\n"
                         "        os.kill(int(os.environ['WORKER_PID']), signal.SIGKILL)\n"
                         "    return original(*a, **k)\n"
                         "wf.compute_day = compute_day\n"
                         "from gpu_risk.cli import main\n"
                         "sys.argv = ['gpu-risk', *sys.argv[1:]]\n"
                         "main()\n")
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-c", kill_then_run, "run", str(wf), "--scheduler", address],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GPU_RISK_NO_WORKER_TIMEOUT": "3", "WORKER_PID": str(worker.pid)})
        assert time.monotonic() - t0 < 90
        assert worker.wait(timeout=30) != 0
        one_line_error(done, "no worker", address)
        assert store.results_days(tmp_path / "out.zarr") == small["days"][:1]
        assert cli("verify", tmp_path / "out.zarr").returncode == 0
    finally:
        scheduler.kill()
        scheduler.wait()
        if "worker" in locals():
            worker.kill()


def test_an_unreachable_scheduler_is_one_line_after_the_connect_timeout(small, tmp_path):
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
           "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "backend": "cpu"}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    done = cli("run", wf, "--scheduler", f"tcp://127.0.0.1:{port}", env={"GPU_RISK_CONNECT_TIMEOUT": "2"})
    assert time.monotonic() - t0 < 60
    one_line_error(done, "no Dask scheduler answered", f"127.0.0.1:{port}", "within 2 s")
    assert not (tmp_path / "out.zarr").exists() or cli("verify", tmp_path / "out.zarr").returncode == 0


def test_verify_names_missing_truncated_and_flipped_chunks_and_runs_recompute_damaged_results(small, tmp_path):
    """`gpu-risk verify` lists every damaged chunk in one line each; opening a damaged input
    day names the chunk; a damaged results day is recomputed by the next run."""
    import shutil
    from pathlib import Path

    from gpu_risk import store
    from gpu_risk.errors import InputError

    book = tmp_path / "book.zarr"
    shutil.copytree(small["book"], book)
    ok = cli("verify", book, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["problems"] == [] and json.loads(ok.stdout)["chunks"] > 0
    day = book / "BTCUSDT" / small["days"][0]
    chunk = next(p for p in sorted((day / "bid_size").rglob("*")) if p.is_file() and p.name != "zarr.json")
    flipped = next(p for p in sorted((day / "ask_price").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    flipped.write_bytes(bytes(data))
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    other = next(p for p in sorted((book / "ETHUSDT" / small["days"][1] / "time").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    other.unlink()  # missing
    bad = cli("verify", book)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.startswith("damaged:")]
    text = " ".join(bad.stderr.split())
    assert len(lines) >= 3, bad.stderr
    assert "bid_size" in text and "bytes" in text and "ask_price" in text and "checksum" in text.lower()
    assert "time" in text and "missing" in text
    with pytest.raises(InputError, match="damaged store.*bid_size"):
        store.open_book_instrument(book, "BTCUSDT")
    # results: a damaged day is recomputed, the others kept
    cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
           "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "scheduler": "sync", "backend": "cpu"}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    assert cli("run", wf).returncode == 0
    victim = next(p for p in sorted(Path(tmp_path / "out.zarr" / small["days"][1]).rglob("*"))
                  if p.is_file() and p.name != "zarr.json")
    victim.unlink()
    assert cli("verify", tmp_path / "out.zarr").returncode == 2
    again = cli("run", wf, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["computed"] == [small["days"][1]]
    assert cli("verify", tmp_path / "out.zarr").returncode == 0


def test_spec_bad_inputs_negative_margin_days_and_empty_sets(tmp_path):
    """SPEC's bad-input list: brackets whose maintenance margin is negative anywhere, a
    snapshot outside its day, empty days, empty account sets."""
    import copy

    import numpy as np
    from conftest import MARKET_SPEC, make_book, make_positions

    import gpu_risk
    from gpu_risk import store
    from gpu_risk.errors import InputError

    spec = copy.deepcopy(MARKET_SPEC)
    spec["instruments"]["BTCUSDT"]["brackets"][1] = [50_000, 0.005, 300]  # 250 - 300 < 0 at the floor
    with pytest.raises(InputError, match="maintenance margin negative at the floor of bracket 1"):
        gpu_risk.liquidation(make_positions(5), store.market_from_dict(spec))

    path = tmp_path / "b.zarr"
    store.write_book(make_book(n=30, start="2026-01-05T10:00"), path, "X")
    t = store.zarr.open_array(str(path), path="X/2026-01-05/time", mode="r+")
    raw = t[:]
    raw[7] = raw[7] + 2 * 86_400 * 10**9  # a snapshot two days later, inside the 5th's group
    t[:] = np.sort(raw)
    with pytest.raises(InputError, match="outside its day 2026-01-05") as info:
        store.open_book_instrument(path, "X")
    assert info.value.index == 29 and info.value.instrument == "X"

    market = store.market_from_dict(MARKET_SPEC)
    nobody = make_positions(5).isel(account=slice(0, 0))
    liq = gpu_risk.liquidation(nobody, market)
    assert liq.sizes["account"] == 0 and float(liq.long_open_interest.sum()) == 0.0
    surface = gpu_risk.stress_surface(nobody, market, [-0.1, 0.1], vol_shocks=[0.0])
    assert (surface.accounts_liquidated == 0).all() and (surface.shortfall == 0).all()
    empty = make_book(5).isel(time=slice(0, 0))
    with pytest.raises(ValueError, match="no snapshot"):
        gpu_risk.imbalance_grid(empty, "1s")


@pytest.mark.parametrize("damage,where", [
    (lambda s: s.update(assets=None), "assets must be a non-empty mapping"),
    (lambda s: s["instruments"]["BTCUSDT"].update(brackets=[[0]]), "instruments.BTCUSDT.brackets[0]"),
    (lambda s: s["instruments"]["BTCUSDT"].update(brackets="x"), "instruments.BTCUSDT.brackets must be a list"),
    (lambda s: s["assets"].update(USDT=[1, 2]), "assets.USDT must be a mapping"),
    (lambda s: s["assets"]["BTC"].update(price="abc"), "assets.BTC.price must be a number"),
    (lambda s: s["instruments"]["BTC-C-55000"].update(expiry="not a date"), "instruments.BTC-C-55000.expiry"),
], ids=["assets-null", "one-element-bracket", "brackets-string", "asset-list", "price-string", "expiry"])
def test_malformed_market_specs_name_the_field(damage, where, tmp_path):
    import copy

    from conftest import MARKET_SPEC

    spec = copy.deepcopy(MARKET_SPEC)
    damage(spec)
    path = tmp_path / "market.yaml"
    path.write_text(yaml.safe_dump(spec, default_flow_style=False).replace("!!python/tuple", ""))
    done = cli("validate", "--market", path)
    one_line_error(done, where, "market.yaml")


def test_a_huge_bad_field_is_not_echoed_whole():
    from gpu_risk.errors import InputError

    err = InputError("malformed field " + "x" * 2_000_000, store="s.csv", index=4, label="y" * 2_000_000)
    assert len(str(err)) < 2_000 and "2,000,016 characters" in str(err) and "first bad index 4" in str(err)


def test_structural_damage_and_odd_names_are_one_line(small, tmp_path):
    """An array without dimension_names, an instrument named like Zarr's metadata file, a
    Binance line that is a JSON array, a depth diff without its update ids."""
    import gzip
    import shutil
    from pathlib import Path

    from conftest import make_book

    from gpu_risk import store
    from gpu_risk.errors import InputError
    from gpu_risk.importers.binance import import_binance

    book = tmp_path / "book.zarr"
    shutil.copytree(small["book"], book)
    meta = book / "BTCUSDT" / small["days"][0] / "bid_price" / "zarr.json"
    spec = json.loads(meta.read_text())
    spec.pop("dimension_names")
    meta.write_text(json.dumps(spec))
    one_line_error(cli("validate", "--book", book), "dimension_names", f"BTCUSDT/{small['days'][0]}")

    with pytest.raises(ValueError, match="zarr.json"):
        store.write_book(make_book(10), tmp_path / "b.zarr", "zarr.json")

    feed = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "binance_hftbacktest_feed"
    src = feed / "usdm" / "btcusdt_20240808.gz"
    if not src.exists():
        pytest.skip("shared Binance captures not present")
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    depth = next(i for i, line in enumerate(lines) if "depthUpdate" in line and i > 60)
    ts, payload = lines[depth].split(" ", 1)
    for name, bad in (("array.gz", f"{ts} [1, 2, 3]\n"),
                      ("no_u.gz", f"{ts} " + payload.replace('"U":', '"X":', 1))):
        path = tmp_path / name
        with gzip.open(path, "wt") as f:
            f.writelines(lines[:depth] + [bad] + lines[depth + 1:])
        with pytest.raises(InputError) as info:
            import_binance([path], 5, tmp_path / f"{name}.zarr")
        assert name in str(info.value) and f"line {depth + 1}" in str(info.value)


def test_a_full_disk_mid_run_is_one_line_and_loses_nothing(small, tmp_path):
    """The disk fills while the second day's results are written (ENOSPC raised by the
    writer): one line naming the error, the first day complete, the second invisible; the
    next run finishes it."""
    cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
           "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "scheduler": "sync", "backend": "cpu"}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    script = ("import errno, os, sys\n"
              "import gpu_risk.stores.results as results\n"
              "original, calls = results.write_day_dataset, []\n"
              "def full(*a, **k):\n"
              "    calls.append(1)\n"
              "    if len(calls) == 2:\n"
              "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), a[1])\n"
              "    return original(*a, **k)\n"
              "results.write_day_dataset = full\n"
              "from gpu_risk.cli import main\n"
              "sys.argv = ['gpu-risk', 'run', sys.argv[1]]\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script, str(wf)], capture_output=True, text=True)
    one_line_error(done, "No space left on device", "out.zarr")
    from gpu_risk import store

    assert store.results_days(tmp_path / "out.zarr") == small["days"][:1]
    again = cli("run", wf, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["computed"] == small["days"][1:]
    assert cli("verify", tmp_path / "out.zarr").returncode == 0


def test_a_deleted_time_or_account_chunk_is_named_not_read_as_zeros(small, tmp_path):
    """A deleted `time` chunk read as 1970-01-01 (the cascade axis then ran from 1970), a
    deleted `account` chunk made every account id 0: both now name the missing chunk."""
    import shutil

    day = small["days"][1]
    book, positions = tmp_path / "book.zarr", tmp_path / "positions.zarr"
    shutil.copytree(small["book"], book)
    shutil.copytree(small["positions"], positions)
    (book / "BTCUSDT" / day / "time" / "c" / "0").unlink()
    (positions / day / "account" / "c" / "0").unlink()
    one_line_error(cli("validate", "--book", book), "damaged store", f"BTCUSDT/{day}", "time/c/0 is missing")
    one_line_error(cli("validate", "--positions", positions, "--market", small["market"]),
                   "damaged store", day, "account/c/0 is missing")
    done = cli("cascade", "--book", book, "--positions", positions, "--market", small["market"],
               "--out", tmp_path / "c.zarr", "--scheduler", "sync", "--every", "1h", "--initial-shocks=-0.05")
    one_line_error(done, "damaged store", "is missing")


@pytest.mark.parametrize("damage", ["not complete", "metadata lost"])
def test_an_unfinished_book_day_is_named_not_dropped(small, tmp_path, damage):
    """A book day marked incomplete, or without its zarr.json, used to drop that instrument
    from the day's results (exit 0); a day all of whose groups are unfinished, to drop the
    day. Both are now one line naming the instrument and day; the other days are written."""
    import shutil

    from gpu_risk import store

    first, second = small["days"][:2]
    book = tmp_path / "book.zarr"
    shutil.copytree(small["book"], book)
    for inst, day in (("ETHUSDT", first), ("BTCUSDT", second), ("ETHUSDT", second)):
        meta = book / inst / day / "zarr.json"
        if damage == "metadata lost":
            meta.unlink()
        else:
            spec = json.loads(meta.read_text())
            spec["attributes"]["gpu_risk_complete"] = False
            meta.write_text(json.dumps(spec))
    done = cli("imbalance", "--book", book, "--out", tmp_path / "i.zarr", "--scheduler", "sync", "--bucket", "10s")
    one_line_error(done, f"book day {first} is present but not complete", "ETHUSDT")
    shutil.rmtree(book / "ETHUSDT" / first)  # the operator leaves ETHUSDT out of that day
    done = cli("imbalance", "--book", book, "--out", tmp_path / "i.zarr", "--scheduler", "sync", "--bucket", "10s")
    one_line_error(done, f"book day {second} is present but not complete")
    assert store.results_days(tmp_path / "i.zarr") == [first]
    grid = store.open_results(tmp_path / "i.zarr")[first]["imbalance"].to_dataset()
    assert list(grid.instrument.values) == ["BTCUSDT"]


READ_ONLY = """
import builtins, errno, io, os, sys
target = os.path.abspath(sys.argv[1])
def refused(path):
    return os.path.abspath(os.fsdecode(path)).startswith(target)
def deny(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
def ro_open(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and refused(file) and set(mode) & set("wax+"):
        deny(file)
    return real_open(file, mode, *a, **k)
def ro_os_open(path, flags, *a, **k):
    if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        deny(path)
    return real_os_open(path, flags, *a, **k)
def ro_mkdir(path, *a, **k):
    if refused(path):
        deny(path)
    return real_mkdir(path, *a, **k)
io.open = builtins.open = ro_open
os.open, os.mkdir = ro_os_open, ro_mkdir
from gpu_risk.cli import main
sys.argv = ["gpu-risk", *sys.argv[2:]]
main()
"""


def test_a_read_only_output_is_one_line_and_changes_nothing(small, tmp_path):
    """Every write under the output refused with EROFS (a read-only mount, simulated: tests
    run as root, which ignores permissions): a run into a new output and into an existing
    one, and an import into an existing book, end in one line naming the error; what the
    stores held is unchanged and still verifies."""
    import shutil

    from gpu_risk import store

    cfg = {"name": "t", "stores": {"positions": small["positions"], "market": small["market"]},
           "families": ["liquidation"], "output": str(tmp_path / "out.zarr"), "scheduler": "sync", "backend": "cpu"}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))

    def read_only(target, *args):
        return subprocess.run([sys.executable, "-c", READ_ONLY, str(target), *map(str, args)],
                              capture_output=True, text=True)

    one_line_error(read_only(tmp_path / "out.zarr", "run", wf), "Read-only file system")
    assert not (tmp_path / "out.zarr").exists()
    assert cli("run", wf, "--end", small["days"][0]).returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out.zarr").rglob("*"))
    one_line_error(read_only(tmp_path / "out.zarr", "run", wf), "Read-only file system", "out.zarr")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out.zarr").rglob("*")) == before
    assert store.results_days(tmp_path / "out.zarr") == small["days"][:1]
    assert cli("verify", tmp_path / "out.zarr").returncode == 0

    book = tmp_path / "book.zarr"
    shutil.copytree(small["book"], book)
    sample = (Path(__file__).resolve().parents[2] / "shared/data/real/databento_aapl_mbp10_2024-10-21"
              / "first_25000_rows.csv")
    if sample.exists():
        csv = tmp_path / "db.csv"
        csv.write_text("".join(sample.read_text().splitlines(keepends=True)[:50]).replace("2 33.53", "233.53"))
        one_line_error(read_only(book, "import", "databento", csv, "--out", book), "Read-only file system")
        assert cli("verify", book).returncode == 0
        assert sorted(store.book_instruments(book)) == ["BTCUSDT", "ETHUSDT"]


def test_empty_import_files_say_so_in_one_line(tmp_path):
    """Empty or header-only files: LOBSTER and Binance name the file; Databento's header
    alone imports nothing and says so; no store is created by any of them."""
    import gzip

    (tmp_path / "ob.csv").write_text("")
    (tmp_path / "msg.csv").write_text("")
    one_line_error(cli("import", "lobster", tmp_path / "ob.csv", tmp_path / "msg.csv", "--date", "2012-06-21",
                       "--instrument", "X", "--out", tmp_path / "l.zarr"), "orderbook file is empty", "ob.csv")
    with gzip.open(tmp_path / "empty.gz", "wt"):
        pass
    one_line_error(cli("import", "binance", tmp_path / "empty.gz", "--levels", 5, "--out", tmp_path / "b.zarr"),
                   "hold no line", "empty.gz")
    with gzip.open(tmp_path / "snap.gz", "wt") as f:
        f.write('1723161255319702566 {"lastUpdateId": 5, "E": 1, "T": 1, "bids": [["1.0", "1"]], "asks": []}\n')
    one_line_error(cli("import", "binance", tmp_path / "snap.gz", "--levels", 5, "--out", tmp_path / "b.zarr"),
                   "no depthUpdate diff", "snap.gz")
    header = ",".join(["ts_recv", "ts_event", "symbol"] + [f"{s}_{w}_{i:02d}" for i in range(10)
                                                           for s in ("bid", "ask") for w in ("px", "sz")])
    (tmp_path / "head.csv").write_text(header + "\n")
    done = cli("import", "databento", tmp_path / "head.csv", "--out", tmp_path / "d.zarr")
    assert done.returncode == 0 and "holds no row: nothing imported" in " ".join(done.stderr.split()), done
    for name in ("l.zarr", "b.zarr", "d.zarr"):
        assert not (tmp_path / name).exists()


def test_a_damaged_results_day_fails_the_report_and_is_recomputed(small, tmp_path):
    """A results chunk deleted, or a whole family group removed: `report` used to exit 0 on
    them (the chunk reading as its fill value, the family missing). Now it names the damage
    in one line; the next run recomputes exactly those days, and the report then renders."""
    import shutil

    cfg = {"name": "t", "stores": {"book": small["book"], "positions": small["positions"],
                                   "market": small["market"]},
           "families": ["liquidation", "imbalance"], "output": str(tmp_path / "out.zarr"), "scheduler": "sync",
           "backend": "cpu", "imbalance": {"bucket": "10s"}}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg))
    assert cli("run", wf).returncode == 0
    first, second = small["days"][:2]
    out = tmp_path / "out.zarr"
    chunk = next(p for p in sorted((out / second / "liquidation").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    one_line_error(cli("report", out, "--out", tmp_path / "r.html"), "damaged store", second, "is missing",
                   "recomputes")
    shutil.rmtree(out / first / "imbalance")
    one_line_error(cli("report", out, "--out", tmp_path / "r.html"), "damaged store", first, "imbalance/")
    again = cli("run", wf, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["computed"] == [first, second], again.stderr
    assert cli("report", out, "--out", tmp_path / "r.html").returncode == 0
    assert cli("verify", out).returncode == 0
