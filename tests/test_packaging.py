"""The installed package: one import namespace (cpfs_bench.*), no generic top-level names."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("evaluate", "results", "baselines", "pretrain", "bench")


def test_generic_names_do_not_resolve_to_this_repository(tmp_path):
    # run from outside the repository, as a user's script would: only the installed mapping counts
    code = ("import importlib.util, json; names = %r; "
            "specs = {n: importlib.util.find_spec(n) for n in names}; "
            "ours = {n: importlib.util.find_spec('cpfs_bench.' + n) for n in names}; "
            "print(json.dumps({'generic': {n: s and (s.origin or str(list(s.submodule_search_locations or []))) "
            "for n, s in specs.items()}, 'ours': {n: s and s.origin for n, s in ours.items()}}))") % (GENERIC,)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    for name, origin in found["generic"].items():
        assert origin is None or str(REPO) not in origin, f"`import {name}` resolves to this repository: {origin}"
    for name, origin in found["ours"].items():
        assert origin and Path(origin).resolve().parent == REPO / name, f"cpfs_bench.{name} -> {origin}"


def test_bench_command_is_installed():
    r = subprocess.run([sys.executable, "-m", "cpfs_bench.bench.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "cpfs-bench" in r.stdout, r.stderr
