"""Write-then-rename, so that no reader ever sees a half-written file (numpy-free, torch-free)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def temp_beside(path, keep_suffix: bool = False) -> Path:
    """A new, uniquely named empty file beside `path` (its folder made), with the user's usual permissions.
    keep_suffix: end its name with path's suffix, for writers that choose the format by it (FFmpeg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = (path.stem, f".part{path.suffix}") if keep_suffix else (path.name, ".part")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600 files; give the user's usual permissions
    return Path(tmp)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` on success, delete it on failure."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unwritable(path, folder: bool = False) -> str | None:
    """Why `path` (a file, or with folder=True a folder) could not be written, or None; creates nothing.
    Tools ask before their long work, so that a bad output path fails in a second, not at the end."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return "it is a file; give a folder" if folder else "it is a folder; give a file name"
    start = path if folder else path.parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (permission denied)"
    return None
