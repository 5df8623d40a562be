"""The last round of a set's shards, when it is a partial one, rendered in parts so that no worker sits
idle through it (`synthgen build`, `dots` and `pack`).

A shard is rendered and written by one worker. When the shards do not divide evenly over the workers,
the last round leaves workers idle for the whole of a shard's render: a 1-shard build used one worker
whatever the machine (1,000 images on 2 workers ran slower than on 1), and 3 shards on 2 workers or 40
on 16 end with half the workers idle. So the shards of a partial last round are rendered in parts of a
few hundred images each, which any worker takes; each part's arrays go to a raw file in the prepared
folder, and the worker whose part completes a shard assembles it from the parts and writes it like any
other, while the others render on. An image depends only on (seed, index), so the shard is the same,
byte for byte, whichever way it was rendered.

A full last round is left whole: there every worker is busy to the end but for the spread of their
finishing times, and parts add the writing of the last shard after its last part, with the other
workers idle (on 2 cores, 2 shards on 2 workers ran 5-8% slower in parts; `bench_synthgen.py
--split-full-rounds` measures it).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import write_atomic
from synthgen.errors import write_failure
from synthgen.parallel import run_shards
from synthgen.prepared import PREPARED_DIR
from synthgen.shards import SHARD_NAME

PARTS_PER_SHARD = 4  # the tail becomes about a quarter of a shard's render
MIN_PART_IMAGES = 32  # below this a part's own costs (its task, its file) are no longer small


@dataclass(frozen=True)
class Part:
    """Rows first_row .. first_row + n_rows - 1 of shard `shard`."""

    shard: int
    index: int
    first_row: int
    n_rows: int


def plan_parts(todo: list[int], sizes: dict[int, int], workers: int) -> tuple[list[int], dict[int, list[Part]]]:
    """The shards to render whole, and the parts of the shards of a partial last round (`sizes`: images
    per shard). Each of those is split into PARTS_PER_SHARD parts or more, so that together they give
    every worker some (a 1-shard build on 16 workers: 16 parts), but no part under MIN_PART_IMAGES."""
    partial = len(todo) % workers if workers > 1 else 0
    if not partial:
        return list(todo), {}
    last = todo[-partial:]
    per_shard = max(PARTS_PER_SHARD, -(-workers // partial))
    whole, split = list(todo[:-partial]), {}
    for shard in last:
        n = sizes[shard]
        n_parts = min(per_shard, n // MIN_PART_IMAGES)
        if n_parts < 2:
            whole.append(shard)
            continue
        bounds = [round(i * n / n_parts) for i in range(n_parts + 1)]
        split[shard] = [Part(shard, i, lo, hi - lo) for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    return whole, split


def parts_dir(out_dir) -> Path:
    return Path(out_dir) / PREPARED_DIR / "parts"


def part_path(out_dir, part: Part) -> Path:
    return parts_dir(out_dir) / f"shard-{part.shard:05d}-part-{part.index:03d}.npy"


def claim_if_complete(out_dir, parts: list[Part]) -> bool:
    """Whether this process is to write the shard of `parts` (all of it): every part file is in, and it took
    the shard's claim first. The claim is a file created only if absent, so of the workers that see the
    last parts land at once exactly one writes the shard. Where a shared file system shows other hosts'
    files late, nobody may claim a shard: `run_set` then writes it after the render."""
    if not all(part_path(out_dir, part).exists() for part in parts):
        return False
    try:
        claim = parts_dir(out_dir) / f"shard-{parts[0].shard:05d}.claim"
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def clear_parts(out_dir) -> None:
    """Drop the parts folder: before a render, the parts an interrupted run left (they are rendered again: a
    part is never kept across runs); after it, the shards' claims. The prepared folder that holds it goes
    too once nothing else is in it (`synthgen dots` keeps nothing else there)."""
    folder = parts_dir(out_dir)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # absent, or the object store of a build is still in it
        folder.parent.rmdir()


def save_part(out_dir, part: Part, arrays: dict[str, np.ndarray]) -> None:
    """A part's shard arrays in one file that appears whole or not at all: their names, then each array,
    in numpy's .npy layout one after the other, written straight from the arrays (npz cost 8x as much:
    zip's CRC and copies). It is read back from the page cache by the worker that assembles the shard,
    so it is not flushed to disk."""
    path = part_path(out_dir, part)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(handle) -> None:
        for array in (np.array(list(arrays)), *arrays.values()):
            np.lib.format.write_array(handle, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)

    write_atomic(path, write, sync=False)


def _contents(handle) -> dict[str, tuple[tuple, np.dtype, int]]:
    """name -> (shape, dtype, where its bytes start) of every array in an open part file."""
    names = np.lib.format.read_array(handle, allow_pickle=False).tolist()
    found = {}
    for name in names:
        np.lib.format.read_magic(handle)
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)  # always C order: save_part
        found[name] = (shape, dtype, handle.tell())
        handle.seek(math.prod(shape) * dtype.itemsize, os.SEEK_CUR)
    return found


def load_parts(out_dir, parts: list[Part]) -> dict[str, np.ndarray]:
    """The shard arrays of consecutive parts joined, as one shard's: every dataset end to end, read
    straight into place (a part's images are never copied twice), the object offsets shifted by the
    objects before them."""
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(part_path(out_dir, part), "rb")) for part in parts]
        contents = [_contents(handle) for handle in handles]
        joined = {}
        for name, (shape, dtype, _) in contents[0].items():
            pieces = [(handle, *found[name]) for handle, found in zip(handles, contents)]
            if name == "object_offset":
                joined[name] = join_offsets([_read(handle, shape, dtype, at) for handle, shape, dtype, at in pieces])
                continue
            joined[name] = out = np.empty((sum(s[0] for _, s, _, _ in pieces),) + shape[1:], dtype)
            row = 0
            for handle, piece_shape, _, at in pieces:
                into = out[row:row + piece_shape[0]]
                handle.seek(at)
                if into.size and handle.readinto(memoryview(into).cast("B")) != into.nbytes:
                    raise OSError(f"{handle.name}: ends before its {name} data (truncated)")
                row += piece_shape[0]
    return joined


def _read(handle, shape: tuple, dtype: np.dtype, at: int) -> np.ndarray:
    handle.seek(at)
    return np.fromfile(handle, dtype, math.prod(shape)).reshape(shape)


def join_offsets(offsets: list[np.ndarray]) -> np.ndarray:
    """Consecutive parts' object offsets (each starting at 0) as one shard's."""
    starts = np.cumsum([0] + [int(o[-1]) for o in offsets[:-1]])
    return np.concatenate([offsets[0][:1]] + [o[1:] + start for o, start in zip(offsets, starts)])


def remove_parts(out_dir, parts: list[Part]) -> None:
    for part in parts:
        part_path(out_dir, part).unlink(missing_ok=True)


# --------------------------------------------------------------------------- in a worker


def write_from_parts(out_dir, parts: list[Part], write) -> str:
    """Join a shard's parts, write the shard with `write(arrays) -> checksum`, drop the parts. Part files
    that cannot be read or removed are an OutputError naming the shard."""
    try:
        checksum = write(load_parts(out_dir, parts))
        remove_parts(out_dir, parts)
    except OSError as exc:  # `write` reports its own failures (OutputError)
        raise write_failure(f"the parts of {_shard_name(parts[0])}", out_dir, exc) from None
    return checksum


def finish_part(out_dir, parts: list[Part], index: int, arrays: dict[str, np.ndarray], write) -> dict:
    """Save part `index` of `parts`; if that completes the shard and this worker claims it, write the shard
    (`write_from_parts`). Returns what the part's result adds: {"checksum": ...} when it wrote the shard, else
    nothing. A part that cannot be saved is an OutputError too."""
    try:
        save_part(out_dir, parts[index], arrays)
        claimed = claim_if_complete(out_dir, parts)
    except OSError as exc:
        raise write_failure(f"a part of {_shard_name(parts[index])}", out_dir, exc) from None
    return {"checksum": write_from_parts(out_dir, parts, write)} if claimed else {}


def _shard_name(part: Part) -> str:
    return SHARD_NAME.format(part.shard)


# --------------------------------------------------------------------------- in the main process


def run_set(out_dir, todo: list[int], sizes: dict[int, int], workers: int, whole, part, assemble, writer, *,
            total: int, progress: bool, desc: str, preload: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """Render and write a set's missing shards `todo` (`sizes`: images each) on `workers`, a partial last
    round in parts. `whole(shard)`, `part(parts, index)` and `assemble(parts)` give the (function, args)
    calls that render and write a whole shard, render one part (its worker writes the shard when its part
    completes it: its result then has a "checksum", as a whole shard's), and write a shard from its parts
    where no part's worker did. `writer` (synthgen.writer.SetWriter) hears of every shard written and every
    bad input met. Returns every task's result and the number of shards rendered in parts."""
    clear_parts(out_dir)
    whole_shards, split = plan_parts(todo, sizes, workers)
    calls = [whole(shard) for shard in whole_shards]
    calls += [part(parts, index) for parts in split.values() for index in range(len(parts))]

    def on_result(result: dict, write) -> None:
        # a part whose shard is not complete yet has only its bad inputs and its machine to report now
        (writer.shard_done if "checksum" in result else writer.part_done)(result, write)

    results = run_shards(calls, total, progress, desc, on_result, preload, done=total - sum(sizes.values()))
    written = {r["shard"] for r in results if "checksum" in r}
    unclaimed = [assemble(parts) for shard, parts in split.items() if shard not in written]
    if unclaimed:
        results += run_shards(unclaimed, len(unclaimed), progress, f"{desc}: writing shards", writer.shard_done,
                              preload, unit="shard")
    return results, len(split)
