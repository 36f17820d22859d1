"""Where cpfs-bench keeps its data: $CPFS_BENCH_HOME, else the user cache folder. Only "where": the
commands that need the embedded default data make it (pretrain/default_data.py, bench/world/defaults.py)."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import click


def bench_home() -> Path:
    home = os.environ.get("CPFS_BENCH_HOME")
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cpfs-bench"


@contextmanager
def locked(path: Path):
    """An exclusive file lock, so two commands never build the same default data at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_world(name: str, write) -> Path:
    """bench_home()/world/<name>, written by write(root) on first use (complete once world.json exists)."""
    root = bench_home() / "world" / name
    with locked(bench_home() / "world" / f".{name}.lock"):
        if not (root / "world.json").exists():
            click.echo(f"Writing the embedded {name} world to {root} (once; reused afterwards)", err=True)
            write(root)
    return root
