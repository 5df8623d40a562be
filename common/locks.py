"""One writer per output folder: a command that writes a folder over minutes or hours holds an exclusive lock
on it, so that a second process started on the same folder (the same command run twice, a scheduler's
retry) is refused instead of interleaving its files with the first one's.

The lock is `flock` on a hidden file in the folder. It dies with its process (a killed command leaves no
stale lock, only the file, which the next holder takes over) and is removed when released, so a finished
folder holds nothing of it. On a file system without locks the command runs as it did before, unguarded.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from common.errors import UserError


UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # what flock says where a file system has no locks
# How long a command tries for a lock that is taken before it is refused: held_by's probe holds the lock for
# microseconds, a writer for the whole of its command.
PROBE_WAIT = 0.25


def lock_file_name(name: str) -> str:
    """The name of the lock file that the command `name` keeps in the folder it holds."""
    return f".{name}.lock"


def held_by(folder, name: str) -> str | None:
    """The pid of the process whose command `name` holds `folder` now, or None where none does (a lock file left
    by a killed command is not held). The probe takes a shared lock for an instant, never waits; a writer that
    meets it waits it out (PROBE_WAIT)."""
    try:
        fd = os.open(Path(folder) / lock_file_name(name), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    except OSError:
        return None  # a file system without locks
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FolderBusy(UserError):
    """Another process holds the folder."""


class FolderLock:
    """An exclusive lock on `folder` (created if missing) for one command. `option` and `doing` word the
    refusal: "--out RUN: another vae-train (pid 123) is training the run there now"."""

    def __init__(self, folder, name: str, option: str = "--out", doing: str = "writing there"):
        self.folder = Path(folder)
        self.path = self.folder / lock_file_name(name)
        self.name, self.option, self.doing = name, option, doing
        self.created: list[Path] = []  # the folders acquire made, deepest last (release removes them, if empty)
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise FolderBusy naming the process that holds it."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.created = missing[::-1]
        deadline = time.monotonic() + PROBE_WAIT
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                if time.monotonic() < deadline:  # perhaps a reader's probe (held_by), gone in an instant
                    time.sleep(0.01)
                    continue
                raise FolderBusy(f"{self.option} {self.folder}: another {self.name} (pid {holder}) is {self.doing} "
                                 f"now; wait for it to finish, or choose another {self.option}") from None
            except OSError as exc:
                if exc.errno not in UNLOCKABLE:
                    os.close(fd)
                    raise
                break  # a file system without locks (some network and FUSE mounts): the command runs unguarded
            try:  # a holder that released meanwhile removed the file: this lock is on a file no one else opens
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Give the lock up and remove its file, and the folders acquire made if nothing else was written in them
        (a command that failed before writing anything leaves nothing behind)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held, so no one locks the file about to go
        os.close(self.fd)
        self.fd = None
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # not empty: the command wrote there
                break
