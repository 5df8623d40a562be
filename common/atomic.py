"""Files that appear complete or not at all: written to a hidden temporary file beside the target,
flushed to disk, then renamed into place (an atomic step on POSIX file systems)."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path, data, sync: bool = True) -> None:
    """Write `data` to `path` atomically; on any failure the temporary file is removed. `data` is bytes, a
    buffer, or a function that writes to the open binary file it is given (for data in several pieces).

    `sync=False` leaves flushing to disk to the caller (`fsync_path` on the file): the file still appears
    whole to every process at once, and is durable across a power cut only once synced. Parallel writers
    use it so that no worker sits waiting on the disk."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:  # a full disk's write names no file: name the target
            exc.filename = str(path)
        raise


def fsync_path(path) -> None:
    """Flush a file, or a folder's entries (renames into it), to disk, whichever process wrote them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
