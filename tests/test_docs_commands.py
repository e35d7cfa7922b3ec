"""Every command of README.md and docs/tutorial.md, run as written: in a clean copy of the
repository beside the shared samples, block after block, small sizes (the demo's through
its make variables). `make test` and `make lint` are what CI itself runs, so they are the
only lines left out."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SKIPPED = ("make test", "make lint")


def blocks(markdown: Path) -> list[tuple[str, str]]:
    """(language, code) of every bash and python block, in order."""
    return re.findall(r"```(bash|python)\n(.*?)```", markdown.read_text(), re.S)


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory):
    """The tracked files of the repository (their times kept, so that make sees the
    environment as up to date), its virtual environment, and ../shared."""
    if not (SHARED / "data" / "real").exists():
        pytest.skip("the shared samples are not beside the repository")
    top = tmp_path_factory.mktemp("docs")
    copy = top / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(Path(sys.executable).resolve().parents[1] if not (ROOT / ".venv").exists()
                                else ROOT / ".venv")
    (top / "shared").symlink_to(SHARED)
    return copy


def run_block(language: str, code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if language == "python":
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
    lines = [line for line in code.splitlines() if not line.strip().startswith(SKIPPED)]
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(lines)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _env(copy: Path) -> dict:
    bindir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            # the demo's size, small (the Makefile's variables; the commands stay as written)
            "DEMO_DAYS": "2", "DEMO_INSTRUMENTS": "2", "DEMO_ACCOUNTS": "1500", "DEMO_SNAPSHOTS": "3000",
            # the copy shares this environment: make must never reinstall it from the copy
            "MAKEFLAGS": "-o .venv/.installed"}


def test_every_readme_command_runs_as_written(clean_copy):
    env = _env(clean_copy)
    ran = 0
    for language, code in blocks(ROOT / "README.md"):
        done = run_block(language, code, clean_copy, env)
        assert done.returncode == 0, (code[:300], done.stdout[-2000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        ran += 1
    assert ran >= 3
    assert (clean_copy / "results" / "overnight.html").exists() and (clean_copy / "report.html").exists()
    assert (clean_copy / "data" / "real" / "book.zarr").exists()


def test_every_tutorial_command_runs_as_written(clean_copy):
    env = _env(clean_copy)
    for language, code in blocks(ROOT / "docs" / "tutorial.md"):
        done = run_block(language, code, clean_copy, env)
        assert done.returncode == 0, (code[:300], done.stdout[-2000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    summary = (clean_copy / "results" / "mine.json").read_text()
    assert '"breached": ["accounts_below_watch"]' in summary
    assert "What to act on" in (clean_copy / "results" / "mine.html").read_text()
