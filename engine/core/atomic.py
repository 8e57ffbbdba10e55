"""Write outputs under a temporary name and rename when complete, so a crash leaves no half-written file.

Temporary names are hidden siblings ``.<name>.<pid>-<random>.partial<suffix>``: a process killed outright (SIGKILL,
power loss) cannot remove its own, so the next write of the same output removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A unique temporary path in the same directory as ``path`` (same filesystem, so rename is atomic)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}-", suffix=f".partial{suffix or target.suffix}", dir=target.parent
    )
    os.close(handle)
    os.unlink(name)
    return Path(name)


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it; a file a live process holds cannot be removed there anyway
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``path`` left by processes that no longer run (and unnamed ones of older versions);
    returns what was removed."""
    target = Path(path)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)-)?[A-Za-z0-9_]+\.partial")
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or (match.group(1) and int(match.group(1)) == os.getpid()):
            continue
        if match.group(1) and process_alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed (stale ones of
    killed runs are removed first)."""
    target = Path(path)
    remove_stale_partials(target)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
