"""The results store: one JSON object per line, one line per reported number (see `results` for the format).

    rec = make_record("voc07_cls", "mAP", 65.3, method="CPFS-KTA", protocol="krahenbuhl16-voc07-cls",
                      deviations={"iters": 1000}, checkpoint="runs/kta/last.pt")
    append_records(default_store(), [rec])
    records = read_records(default_store())
"""
from __future__ import annotations

import fcntl
import functools
import json
import math
import numbers
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from cpfs_bench.bench.files import sha256_file
from cpfs_bench.bench.paths import bench_home

RECORD_VERSION = 2  # 2 added run and dataset_info; version-1 records are still read

#: Field order of a record (as written by `make_record`).
FIELDS = ("record_version", "task", "metric", "value", "unit", "layer", "method", "run", "protocol", "deviations",
          "checkpoint", "checkpoint_sha256", "checkpoint_step", "dataset", "dataset_info", "split", "git_commit",
          "time", "host", "extra")

_PACKAGE_DIR = Path(__file__).resolve().parent


def default_store() -> Path:
    """The default records file: `$CPFS_BENCH_HOME/results/records.jsonl`.

    CPFS_BENCH_HOME defaults to `$XDG_CACHE_HOME/cpfs-bench`, else `~/.cache/cpfs-bench`.
    """
    return bench_home() / "results" / "records.jsonl"


def _git_commit_of(package_dir: Path) -> str | None:
    """HEAD of the git checkout whose top level directly holds `package_dir`, else None (never raises).

    The check on the top level keeps a package installed into some other repository (a virtual
    environment inside a user's project) from reporting that project's commit.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        out = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, env=env, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            return None
        lines = out.stdout.split("\n")
        if len(lines) < 2:
            return None
        top, commit = lines[0].strip(), lines[1].strip()
        if not (Path(top) / package_dir.name).exists() or not (Path(top) / package_dir.name).samefile(package_dir):
            return None
        if len(commit) not in (40, 64) or any(c not in "0123456789abcdef" for c in commit):
            return None
        return commit
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def source_git_commit() -> str | None:
    """The git commit of the cpfs-bench source tree this code runs from (cached per process), or None."""
    return _git_commit_of(_PACKAGE_DIR)


def _nonempty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    return _nonempty_str(name, value)


def _json_dict(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict or None, got {type(value).__name__}")
    value = dict(value)
    for k in value:
        if not isinstance(k, str):
            raise ValueError(f"{name} keys must be strings, got {k!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be JSON-serialisable (finite numbers, strings, lists, dicts): {e}") from None
    return value


def make_record(task: str, metric: str, value: float, *, method: str, protocol: str, layer: str | None = None,
                deviations: Mapping[str, Any] | None = None, checkpoint: str | os.PathLike | None = None,
                dataset: str | os.PathLike | None = None, split: str | None = None,
                extra: Mapping[str, Any] | None = None, checkpoint_sha256: str | None = None,
                run: str | None = None, checkpoint_step: int | None = None,
                dataset_info: Mapping[str, Any] | None = None) -> dict:
    """One result record (a plain dict, field order as in `FIELDS`); see the `results` package docstring.

    `run` names the evaluated run (a table row: several checkpoints of one method each get their own;
    default: the method), `checkpoint_step` its training step, `dataset_info` what the dataset is
    ({"name", "classes", "split", "images", "embedded"}: numbers from different datasets never share a
    table block). `value` is in percent (0..100). `deviations` lists every setting that differs from `protocol`
    ({} when none). The checkpoint file is hashed (streamed) unless its `checkpoint_sha256` is given
    (evaluations hash it once when loading it, not once per record); a missing checkpoint file raises
    FileNotFoundError. Bad inputs raise ValueError naming the problem.
    """
    task = _nonempty_str("task", task)
    metric = _nonempty_str("metric", metric)
    method = _nonempty_str("method", method)
    run = _nonempty_str("run", run) if run is not None else method
    dataset_info = _json_dict("dataset_info", dataset_info)
    protocol = _nonempty_str("protocol", protocol)
    layer = _optional_str("layer", layer)
    split = _optional_str("split", split)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"value must be a real number (percent), got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"value must be a percentage in [0, 100], got {value!r}")
    deviations = _json_dict("deviations", deviations)
    extra = _json_dict("extra", extra)

    ckpt_path, ckpt_sha = None, checkpoint_sha256
    if checkpoint is not None:
        p = Path(os.fspath(checkpoint)).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {str(p)!r} is not a file; cannot record its sha256")
        ckpt_path, ckpt_sha = str(p.resolve()), checkpoint_sha256 or sha256_file(p)
    data_path = None
    if dataset is not None:
        d = Path(os.fspath(dataset)).expanduser()
        if not str(dataset).strip():
            raise ValueError("dataset must be a non-empty path or None")
        data_path = str(d.resolve()) if d.exists() else os.fspath(dataset)

    return {
        "record_version": RECORD_VERSION,
        "task": task,
        "metric": metric,
        "value": value,
        "unit": "percent",
        "layer": layer,
        "method": method,
        "run": run,
        "protocol": protocol,
        "deviations": deviations,
        "checkpoint": ckpt_path,
        "checkpoint_sha256": ckpt_sha,
        "checkpoint_step": checkpoint_step,
        "dataset": data_path,
        "dataset_info": dataset_info,
        "split": split,
        "git_commit": source_git_commit(),
        "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "host": platform.node(),
        "extra": extra,
    }


def _encode(records: Iterable[Mapping]) -> tuple[bytes, int]:
    lines = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"record {i} is a {type(rec).__name__}, not a dict")
        try:
            line = json.dumps(dict(rec), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record {i} is not JSON-serialisable: {e}") from None
        lines.append(line + "\n")  # json.dumps never emits a raw newline: one record, one line
    return "".join(lines).encode("utf-8"), len(lines)


def append_records(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Append records to a JSON-lines file; returns how many were written.

    Safe with several writers (processes or threads) at once: everything is encoded first (a bad
    record writes nothing), then written under an exclusive `flock` on the file opened with
    O_APPEND, in one write loop, and fsynced before the lock is released. A torn last line left by
    a crashed writer is closed with a newline first, so it never swallows our first record.
    Parent folders are created.
    """
    data, count = _encode(records)
    if not count:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return count


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines file, in file order; blank lines are skipped.

    A malformed line raises ValueError naming the file and the 1-based line number.
    """
    path = Path(path)
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e})") from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed record: {e.msg} (column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: malformed record: a {type(rec).__name__}, not an object")
            version = rec.get("record_version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"{path}:{lineno}: malformed record: no integer record_version")
            if version > RECORD_VERSION:
                raise ValueError(f"{path}:{lineno}: record_version {version} is newer than this code "
                                 f"understands ({RECORD_VERSION}); update cpfs-bench")
            out.append(rec)
    return out
