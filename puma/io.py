"""Files that appear whole or not at all, and content hashes: the one owner of both.

Every output of the project goes through these helpers, so a reader (a later stage, a resumed run,
DVC) never sees a half-written file or directory: the bytes go to a temporary sibling on the same
filesystem, are flushed to disk, and are moved into place with one ``os.replace``. On any error the
temporary is removed and the previous file, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "wb") -> None:
    """Write via ``write(fileobj)`` to a temp file beside ``path``, then ``os.replace`` it in.

    The parent directory is created. The file gets mode 0644 (``mkstemp`` makes 0600; outputs are
    ordinary readable files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # e.g. ENOSPC from write(): say which output could not be written
            raise OSError(e.errno, f"{e.strerror or e} (writing {path})", str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``path.write_bytes(data)``, atomically."""
    atomic_write(path, lambda f: f.write(data), mode="wb")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), mode="wb")


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON (with a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Any) -> None:
    """Write an iterable of JSON-serialisable rows, one per line, to ``path`` atomically."""
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), mode="w")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed.

    The temporary directory lives beside ``out`` (same filesystem), so the final ``os.replace`` is a
    rename. An existing ``out`` is removed only after everything was written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20, prefix: bytes = b"") -> str:
    """Hex digest of ``prefix`` + a file's bytes, streamed (``algo`` is any :mod:`hashlib` name; ``prefix``
    e.g. git's ``blob <size>\\0`` header)."""
    h = hashlib.new(algo)
    h.update(prefix)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    return file_digest(path, "sha256", chunk)
