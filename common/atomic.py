"""Files that appear complete or not at all: written to a hidden temporary file beside the target,
flushed to disk, then renamed into place (an atomic step on POSIX file systems); and a folder's outputs
replaced as one step (ReplacedOutputs)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
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


@contextlib.contextmanager
def uninterrupted():
    """A block that Ctrl-C and SIGTERM do not cut short: a signal that comes while it runs is held back and
    delivered, to the handler in place before, as it ends. For steps of a few file renames whose half-done state
    loses data (a second Ctrl-C while an earlier output is being put back). Python runs signal handlers in the
    main thread only, so elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: a handler installed outside Python, which cannot be put back
            previous[signum] = signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


class ReplacedOutputs:
    """A command's outputs written over an earlier run's in one folder, as one step: the earlier files are moved
    aside (renamed into a hidden folder within `out`, so no space is needed) just before the new ones are
    written, and deleted once all of them are. If writing fails (a full disk, an interrupt), every file it wrote,
    whole or partial, is removed and the earlier files are put back. Files of neither stay where they are.
    Needs the folder to itself while it runs (a common.locks.FolderLock)."""

    PREFIX = ".earlier-"

    def __init__(self, out):
        self.out = Path(out)
        self.aside = self.out / f"{self.PREFIX}{os.getpid()}"
        self.moved: list[str] = []
        self.before: set[Path] = set()

    def __enter__(self) -> ReplacedOutputs:
        # A folder set aside by a run that was killed outright: that run's outputs replaced it in part already.
        for stale in self.out.glob(f"{self.PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.before = set(self._paths())
        return self

    def set_aside(self, names) -> None:
        """Move these earlier files (paths relative to `out`) aside; folders they leave empty go too."""
        for name in names:
            source, target = self.out / name, self.aside / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with uninterrupted():  # a file moved aside but not recorded would be deleted with the folder
                os.replace(source, target)
                self.moved.append(name)
            folder = source.parent
            while folder != self.out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent

    def __exit__(self, kind, exc, tb) -> bool:
        # Cut short (a second Ctrl-C as the first one's clean-up runs), it left earlier files aside, which the next
        # run deletes: the signal waits until every one is back.
        with uninterrupted():
            if kind is not None:
                for path in sorted(set(self._paths()) - self.before, key=lambda p: -len(p.parts)):
                    path.rmdir() if path.is_dir() else path.unlink()
                for name in self.moved:
                    (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.aside / name, self.out / name)
            shutil.rmtree(self.aside, ignore_errors=True)
        return False

    def _paths(self):
        """Every file and folder within `out`, but the earlier files set aside."""
        if not self.out.is_dir():
            return []
        return [p for p in self.out.rglob("*") if p != self.aside and self.aside not in p.parents]


def save_figure(fig, path, dpi: int) -> None:
    """A matplotlib figure as a PNG file, written atomically (a failed write leaves no file and names this one),
    then closed."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
    finally:
        plt.close(fig)
