"""Writing a set into an output folder: the one writer that `synthgen build` and `synthgen pack` share.

Its life cycle, in order:
1. `check`: before any work, refuse a folder holding someone else's files or a different set (unless
   --overwrite), and find the shards a resumed (or extended) run can keep;
2. `begin`: the set being replaced removed (not before: a command refused by a later check leaves it as it
   was), and the provisional manifest (`"complete": false`), so an interrupted run is recognised;
3. `shard_done`: per finished shard, its bad inputs reported (one line per input, however often it is
   met), the machine it was made on noted, and, when workers leave it to this process, the shard flushed
   to disk in the background (`part_done`: the same for a part of a shard, synthgen.parts);
4. `fail`: what stopped the run, kept in the manifest so that nobody is told to resume into the same
   failure;
5. `settle`, then `finish`: every shard on disk, then the final manifest, with every shard's checksum
   read back from the shard itself.
Shards themselves are written by the workers (synthgen.shards.write_shard), each atomically.

Durability: a complete manifest is written only after every shard and the folder's entries are flushed
to disk. A shard is renamed into place before it is flushed, so after a power cut an unfinished set may
hold a shard whose data never reached the disk: a resumed run keeps a shard of an unfinished set only
if its contents match its checksum.
"""
from __future__ import annotations

import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import h5py
from tqdm import tqdm

from common.atomic import fsync_path
from common.cli import out_folder_problem
from common.locks import FolderLock
from synthgen.errors import OutputError, UsageError
from synthgen.manifest import (LOCK_FILE, MANIFEST, inside_set_problem, is_own_entry, read_manifest,
                               write_json_atomic)
from synthgen.parallel import this_machine
from synthgen.shards import SHARD_RE, TEMP_RE, VERIFY_THREADS, content_checksum, read_attrs, shard_contents, shard_path
from synthgen.sources import Skipped


@contextmanager
def holding(out_dir):
    """The output folder's lock (common.locks) for a command, taken by `SetWriter.check` (at the first look
    into the folder, once the inputs have been checked) and given up when the command ends: a second synthgen
    writing the same folder meanwhile (the same command twice, or another set with --overwrite) is refused
    rather than mixing its shards with this one's."""
    lock = FolderLock(out_dir, "synthgen", doing="writing a set there")
    try:
        yield lock
    finally:
        lock.release()


class SetWriter:
    """One output folder being written (main process)."""

    def __init__(self, out, manifest: dict, log=print, sync_shards: bool = True, lock: FolderLock | None = None):
        """`sync_shards`: flush each finished shard to disk here (the workers wrote it without); `lock`: the
        folder's lock (`holding`), taken by `check`."""
        self.out = Path(out)
        self.lock = lock
        self.manifest = {**manifest, "complete": False}
        self.log = log
        self.skipped: dict[str, str] = {}  # every bad input met anywhere in the run, reported once
        self.worker_machines: set[str] = set()  # where this run's shards and parts were made
        self.sync_shards = sync_shards
        self._syncs: dict[Path, Future] = {}
        self._syncer: ThreadPoolExecutor | None = None
        self._renamed = False  # shards were renamed into the folder since its entries were last flushed
        self.replacing: list[Path] = []  # the entries of a set to replace (--overwrite), removed at `begin`

    @property
    def identity(self) -> str:
        return self.manifest["build_identity"]

    def existing(self) -> dict | None:
        """The manifest already in the folder, if any (synthgen's own)."""
        return read_manifest(self.out)

    def check(self, n_shards: int, overwrite: bool, differences: Callable[[dict], str],
              keep: Callable[[int, dict], bool] = lambda index, attrs: True,
              n_images: int | None = None, progress: bool = False) -> set[int]:
        """Check the folder before any work; return the shards a resumed run keeps. A set to replace (--overwrite)
        stays until `begin`.

        A shard is kept when it belongs to this set (same identity), `keep(index, attrs)` agrees and, in a
        set that was never finished, its contents match its checksum (see Durability above).
        Raises OutputError, changing nothing, for a folder holding files synthgen did not write, or a
        different set without --overwrite (`differences(old manifest)` says what differs); UsageError for an
        --out that cannot be a folder, and for what resuming the same set cannot do (with `n_images`, the --n
        asked for): shrink it, or run again into the failure that stopped it.
        """
        out = self.out
        problem = out_folder_problem(out) or inside_set_problem(out, own_set=True)
        if problem:  # an --out that cannot be a folder is a bad argument, as in every other command
            raise UsageError(problem)
        if self.lock is not None:
            self.lock.acquire()
        entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.exists() else []
        if not entries:
            return set()
        foreign = [name for name in entries if not is_own_entry(name)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise OutputError(f"--out {out}: the folder holds files synthgen did not write ({shown}); "
                              "choose an empty or new folder")
        manifest = read_manifest(out)
        if not overwrite:
            if manifest is not None and manifest.get("build_identity") == self.identity:
                if n_images is not None:
                    self._refuse_unresumable(manifest, n_images)
                for name in entries:
                    if TEMP_RE.fullmatch(name):  # left by an interrupted run
                        (out / name).unlink(missing_ok=True)
                return self._kept_shards(n_shards, keep, verify=not manifest.get("complete"), progress=progress)
            if manifest is None or manifest.get("complete") or any(SHARD_RE.fullmatch(name) for name in entries):
                what = differences(manifest) if manifest else "an unknown set"
                raise OutputError(f"--out {out}: the folder holds a different set ({what}); re-run with --overwrite "
                                  "to replace it, or choose another --out")
            # A command that stopped before its first shard (an unreachable scheduler, an interrupt) left only its
            # provisional manifest: there is no image to lose, and refusing would hold the folder for that set.
            self.log(f"synthgen: {out} held an unfinished set without a single shard; replacing it")
        # Replaced at `begin`, once every check has passed: a design refused before any work leaves the set as it was.
        self.replacing = [out / name for name in entries]
        return set()

    def replaced_bytes(self) -> int:
        """The bytes that replacing the folder's set frees (0 when it is resumed, or empty)."""
        return sum(f.stat().st_size for path in self.replacing
                   for f in ([path] if not path.is_dir() else path.rglob("*")) if f.is_file())

    def _refuse_unresumable(self, old: dict, n_images: int) -> None:
        if old.get("n_images", 0) > n_images:
            raise UsageError(f"--n {n_images}: {self.out} holds a set of {old['n_images']} images; a smaller --n "
                             f"would drop built images. Give --n {old['n_images']} or more to resume or extend it, "
                             "or --overwrite to replace it")
        failure = old.get("failure")
        if failure and failure.get("image", -1) < n_images:
            raise UsageError(f"{self.out} stopped at image {failure['image']} and would stop there again: "
                             f"{failure['message']}")

    def _kept_shards(self, n_shards: int, keep, verify: bool, progress: bool) -> set[int]:
        done = set()
        present = [index for index in range(n_shards) if shard_path(self.out, index).exists()]
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:  # hashing runs outside the GIL: several shards at once
            states = pool.map(lambda index: _shard_state(shard_path(self.out, index), verify), present)
            for index, (attrs, intact) in zip(present, tqdm(
                    states, total=len(present), desc="synthgen: checking the shards of the unfinished set",
                    unit="shard", disable=not (verify and progress and len(present) > 1), dynamic_ncols=True)):
                if intact and attrs.get("build_identity") == self.identity and keep(index, attrs):
                    done.add(index)
                    if verify:  # its writer may have stopped before flushing it; the complete manifest vouches for it
                        fsync_path(shard_path(self.out, index))
                        self._renamed = True
        return done

    def begin(self) -> None:
        """Replace the set that `check` found to be replaced, create the folder and write the provisional
        manifest."""
        for path in self.replacing:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.replacing = []
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest.pop("failure", None)
        write_json_atomic(self.out / MANIFEST, self.manifest)

    def report(self, item: Skipped, write=None) -> None:
        """One line per bad input, the first time it is met."""
        if item.path not in self.skipped:
            self.skipped[item.path] = item.reason
            (write or self.log)(item.line())

    def shard_done(self, result: dict, write=None) -> None:
        """A worker's finished shard (its result names "shard" and may list "skipped" (path, reason)
        pairs): report its bad inputs, note its machine (`part_done`) and, with `sync_shards`, start flushing it
        to disk."""
        self.part_done(result, write)
        self._renamed = True
        if self.sync_shards:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="synthgen-fsync")
            path = shard_path(self.out, result["shard"])
            self._syncs[path] = self._syncer.submit(fsync_path, path)

    def part_done(self, result: dict, write=None) -> None:
        """A worker's finished part of a shard, or shard: report its bad inputs, note its machine."""
        for path, reason in result.get("skipped", ()):
            self.report(Skipped(path, reason), write)
        if "machine" in result:
            self.worker_machines.add(result["machine"])

    def settle(self) -> None:
        """Wait until every shard given to `shard_done` is on disk, and the folder's entries too."""
        syncs, self._syncs = self._syncs, {}
        try:
            for path, sync in syncs.items():
                try:
                    sync.result()
                except OSError as exc:
                    raise OutputError(f"{path}: cannot be flushed to disk ({exc.strerror or exc}); the set is not "
                                      "finished: check the disk, then re-run the same command to resume") from None
            if self._renamed:
                fsync_path(self.out)
                self._renamed = False
        finally:
            if self._syncer is not None:
                self._syncer.shutdown(wait=False)
                self._syncer = None

    def fail(self, failure: dict) -> None:
        """Record what stopped the run (the finished shards stay)."""
        self.manifest["failure"] = failure
        write_json_atomic(self.out / MANIFEST, self.manifest)

    def finish(self, n_shards: int, summary: dict) -> dict:
        """The final manifest: every shard's range and checksum (read from the shard), the summary,
        every skipped input, and the machine with the libraries the pixels depend on: this process's, and
        those of the workers that made this run's shards (with the dask backend, the cluster's machines).
        Returns the manifest."""
        self.settle()
        entries = []
        for index in range(n_shards):
            path = shard_path(self.out, index)
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
            entries.append({"file": path.name, "first_index": int(attrs["first_index"]),
                            "n_images": int(attrs["n_images"]), "content_sha256": str(attrs["content_sha256"])})
        summary["skipped_inputs"] = [{"path": path, "reason": reason} for path, reason in self.skipped.items()]
        summary["machine"] = this_machine()  # speeds mean little without it
        summary["worker_machines"] = sorted(self.worker_machines)  # the same, but with dask on other machines
        self.manifest.update({"complete": True, "shards": entries, "summary": summary})
        self.manifest.pop("failure", None)
        write_json_atomic(self.out / MANIFEST, self.manifest)
        return self.manifest


def _shard_state(path: Path, verify: bool) -> tuple[dict, bool]:
    """A shard's attributes, and whether it is readable and (with `verify`) matches its checksum. An unreadable
    one is written again (and replaced atomically)."""
    try:
        attrs, arrays = shard_contents(path, hashed=verify)
        return attrs, not verify or content_checksum(arrays, attrs) == attrs.get("content_sha256")
    except (OSError, KeyError, ValueError):
        return {}, False
