"""Files that are never seen half-written, and their fingerprints."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call write(binary file) on a temporary file in the same folder, fsync it, then rename it over
    `path`: readers see the old file or the whole new one, also after a crash or power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """atomic_write of a bytes object."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path, obj) -> Path:
    """atomic_write_bytes of obj as indented JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
