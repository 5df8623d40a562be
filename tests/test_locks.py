"""common.locks: one writer per folder, and readers that look without getting in a writer's way."""
import fcntl
import os
import threading
import time

import pytest

from common.locks import PROBE_WAIT, FolderBusy, FolderLock, held_by, lock_file_name
from conftest import lock_held_elsewhere


def test_a_writer_starting_while_a_reader_probes_the_folder_is_not_refused(tmp_path):
    """held_by takes a shared lock for an instant; a writer starting in that instant waits it out."""
    (tmp_path / lock_file_name("synthgen")).write_text("12345\n")  # left by a killed writer: not held
    probe = os.open(tmp_path / lock_file_name("synthgen"), os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # the probe, held far longer than held_by ever holds it
    threading.Timer(0.05, lambda: os.close(probe)).start()
    with FolderLock(tmp_path, "synthgen") as lock:
        assert held_by(tmp_path, "synthgen") == str(os.getpid())
    assert lock.fd is None and not (tmp_path / lock_file_name("synthgen")).exists()


def test_a_folder_held_by_another_writer_is_refused_naming_it(tmp_path):
    with lock_held_elsewhere(tmp_path, "vae-train") as holder:
        assert held_by(tmp_path, "vae-train") == str(holder.pid)
        started = time.monotonic()
        with pytest.raises(FolderBusy, match=f"--out {tmp_path}: another vae-train \\(pid {holder.pid}\\) is "
                                             "writing there now; wait for it to finish, or choose another --out"):
            FolderLock(tmp_path, "vae-train").acquire()
        assert PROBE_WAIT <= time.monotonic() - started < PROBE_WAIT + 1  # tried for a moment, then refused
    with FolderLock(tmp_path, "vae-train"):  # the holder is gone: taken at once
        pass
