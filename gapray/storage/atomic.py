"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Where it sits: under every write of the run directory (`gapray.storage.RunDir`) and the plots
(`gapray.plots`). The recipe: write `<name>.tmp-<pid>-<rand>` in the same directory (so the final
rename never crosses a filesystem), flush + fsync it, `os.replace` it over the target, then fsync
the directory so the rename itself survives a power cut.

    atomic_write_text(path, "hello\\n")
    with atomic_path(path) as tmp:            # for libraries that want a path (pyarrow, PIL)
        pq.write_table(table, tmp)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"
"""Temp files are `<name>.tmp-<pid>-<rand>`; readers skip names containing this mark."""


def tmp_name(path: Path) -> Path:
    """A fresh temp name next to `path` (pid + random, so concurrent writers never collide)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (written by a library that did not fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename is only durable once its directory is synced)."""
    # Some filesystems (and Windows) refuse to open or fsync a directory; durability there is
    # best effort, atomicity still holds.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on an exception it is removed.

    The temp name does not end in the target's suffix, so tell libraries the format explicitly
    (`image.save(tmp, format="PNG")`, `fig.savefig(tmp, format="png")`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave the temp file behind either.
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Atomically write `path` by calling `write(f)` on an open binary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
