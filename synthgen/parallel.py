"""The joblib backend a command runs its tasks on (local processes, or a dask.distributed cluster), and the
one loop that runs a set's shard tasks with a progress bar (build, pack and dots alike)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import threading
import time
from typing import Callable

import cv2
import joblib
from tqdm import tqdm

from common.machine import available_memory, cores, describe
from synthgen.config import RunOptions
from synthgen.errors import UsageError

LEAK_MARGIN = 300 << 20  # loky's own allowance, kept on top of a worker's caches
SET_LIBRARIES = ("numpy", "OpenCV", "h5py")  # what a set's pixels and files depend on, named with its machine


@contextlib.contextmanager
def parallel_backend(run: RunOptions):
    """Configure joblib for --backend/--workers (connecting to --scheduler for dask).

    Yields the dask client, or None for the local backends; the number of workers is
    `workers_of(client, run)`.
    """
    if run.backend != "dask":
        with joblib.parallel_config(backend=run.backend, n_jobs=run.workers):
            yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--backend dask needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(run.scheduler, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--scheduler {run.scheduler}: cannot connect ({exc})") from None
    try:
        with joblib.parallel_config(backend="dask", n_jobs=run.workers):
            yield client
    finally:
        client.close()


def workers_of(client, run: RunOptions) -> int:
    """How many tasks run at once."""
    return joblib.effective_n_jobs(run.workers) if client is None else sum(client.nthreads().values())


def in_worker(preload: tuple[str, ...], function, *args):
    """Every parallel task runs through here; a task's dict result gets the description of the machine it
    ran on ("machine"). `preload` names the modules the whole job will need: they are
    imported in the worker's first task, whatever that task is, because loky measures a worker's memory
    after its first task and restarts workers that grow by 300 MB, which a large later import would
    otherwise trigger. (Build workers import neither torch nor albumentations: they start in well under a
    second.)"""
    for module in preload:
        importlib.import_module(module)
    cv2.setNumThreads(1)  # workers are the parallelism; OpenCV's own threads only contend
    result = function(*args)
    if isinstance(result, dict):  # a shard task's: where it ran (a dask worker may be another machine)
        result["machine"] = this_machine()
    return result


@functools.lru_cache(maxsize=1)
def this_machine() -> str:
    """This process's machine and the libraries of SET_LIBRARIES (read once per process)."""
    return describe(*SET_LIBRARIES)


def allow_growth(nbytes: int) -> None:
    """Let this worker process grow by `nbytes` (the caches it is meant to fill) without loky taking it for a
    leak. Where psutil is installed, loky measures each worker's memory after its first task and replaces a
    worker that has grown by 300 MB since: build workers filling a --cache-mb of more than that were
    replaced mid-build (and started again cold), with joblib's "A worker stopped while some jobs were given
    to the executor". The limit is a module value that the worker's own loop reads at each check."""
    from joblib.externals.loky import process_executor

    limit = LEAK_MARGIN + nbytes
    if getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", limit) < limit:
        process_executor._MAX_MEMORY_LEAK_SIZE = limit


def within_cores(run: RunOptions, log=print) -> RunOptions:
    """`run` with --workers at most the cores this process may use, on a local backend: more workers than cores
    only contend, and hundreds of processes exhaust the machine (each holds semaphores and memory). The
    images do not depend on the number of workers; the change is said in one line."""
    available = cores()
    if run.backend == "dask" or run.workers <= available:
        return run
    log(f"synthgen: --workers {run.workers} is more than the {available} cores here; running {available} workers")
    return dataclasses.replace(run, workers=available)


SHARD_COPIES = 3  # a shard's images are in memory about three times over as it is written: rendered, stacked,
# and in the HDF5 file image as it grows (measured 2.9x at 512 and 1024 px, besides the cache and the worker)
WORKER_BYTES = 200 << 20  # a worker's own memory besides (about 140 MB measured)


def memory_need(workers: int, shard_bytes: int, shards: int | None, worker_bytes: int) -> int:
    """Bytes that `workers` workers hold at once: a shard each being written (no more shards than the set has:
    a shard split among workers is joined by one of them), and each worker's cache and own memory."""
    return min(workers, shards or workers) * SHARD_COPIES * shard_bytes + workers * worker_bytes


def workers_that_fit(workers: int, shard_bytes: int, shards: int | None, worker_bytes: int, available: int) -> int:
    """The most workers, up to `workers`, whose memory_need fits in `available` bytes (0 if not even one's)."""
    return max((w for w in range(1, workers + 1) if memory_need(w, shard_bytes, shards, worker_bytes) <= available),
               default=0)


def within_machine(run: RunOptions, image_size: int, shard_size: int, n_images: int | None = None,
                   cache_bytes: int = 0, log=print) -> RunOptions:
    """`run` within the cores (`within_cores`) and the memory of this machine, on a local backend: each worker
    writes whole shards in memory, so large images in large shards take more than the machine has (a 2048 px
    shard of 1000 images is 12.6 GB, held about three times). Fewer workers run where that is enough, said in
    one line; where even one cannot run, the command is refused, naming what to lower. `n_images`: the set's
    size where it is known before the sources are read; `cache_bytes`: --cache-mb, where the command has one."""
    run = within_cores(run, log)
    available = None if run.backend == "dask" else available_memory()  # dask's workers are on other machines
    if available is None:
        return run
    image_bytes = image_size * image_size * 3
    shard_bytes = min(shard_size, n_images or shard_size) * image_bytes
    shards = -(-n_images // shard_size) if n_images else None
    workers, per_worker = local_workers(run), WORKER_BYTES + cache_bytes
    fitting = workers_that_fit(workers, shard_bytes, shards, per_worker, available)
    if fitting == workers:
        return run
    parts = (f"a shard of {shard_bytes / 1e9:.2f} GB of images, held about {SHARD_COPIES} times as it is written"
             + (f", {cache_bytes >> 20} MB of --cache-mb" if cache_bytes else "") + ", and about 0.2 GB of its own")
    if not fitting:
        largest = (available - per_worker) // (SHARD_COPIES * image_bytes)
        if cache_bytes > available // 2:
            subject, remedy = f"--cache-mb {cache_bytes >> 20}", "lower --cache-mb"
        else:
            subject = f"--shard-size {shard_size} at --size {image_size}"
            remedy = f"give --shard-size {largest} or less" if largest >= 1 else "free memory, or lower --size"
        one = memory_need(1, shard_bytes, shards, per_worker)
        raise UsageError(f"{subject}: one worker needs about {one / 1e9:.1f} GB of memory ({parts}), and "
                         f"{available / 1e9:.1f} GB is available here; {remedy}")
    running = f"{fitting} worker" + ("s" if fitting != 1 else "")
    need = memory_need(workers, shard_bytes, shards, per_worker)
    log(f"synthgen: {workers} workers would need about {need / 1e9:.1f} GB of memory (each {parts}), more than the "
        f"{available / 1e9:.1f} GB available here; running {running} (a smaller --shard-size"
        + (" or --cache-mb" if cache_bytes else "") + " lets more run; the images are the same)")
    return dataclasses.replace(run, workers=fitting)


def local_workers(run: RunOptions) -> int | None:
    """How many workers a local backend runs (None for dask, whose cluster says once connected)."""
    return None if run.backend == "dask" else joblib.effective_n_jobs(run.workers)


def _nothing() -> None:
    return None


@contextlib.contextmanager
def workers_starting(run: RunOptions, preload: tuple[str, ...] = (), likely_needed: bool = True):
    """Start the local worker processes now, in a thread, so that they start and import (`preload`) while
    this process does its serial work (scanning the sources, the checks, the probes). Yields the function
    that waits for them, to call before the first parallel task (joblib keeps loky's workers from one call
    to the next); on the way out it waits for them too, whatever happened, so that no start outlives the
    command. Other backends keep nothing, or run elsewhere: for them, as for one worker, this does
    nothing; nor when the work is `likely_needed` by nobody (a finished set run again), where the wait for a
    start would be all the command's time: should work turn up after all, the first task starts them."""
    workers = local_workers(run)
    if run.backend != "loky" or workers <= 1 or not likely_needed:
        yield lambda: None
        return

    def start() -> None:
        try:
            with joblib.parallel_config(backend="loky", n_jobs=run.workers):
                joblib.Parallel()(joblib.delayed(in_worker)(preload, _nothing) for _ in range(workers))
        except Exception:  # noqa: BLE001 -- the real tasks meet the same problem, and report it
            pass

    thread = threading.Thread(target=start, name="synthgen-start-workers")
    thread.start()
    try:
        yield thread.join
    finally:
        thread.join()


def run_tasks(calls, progress: bool = False, desc: str = "", preload: tuple[str, ...] = ()) -> list:
    """Run (function, args) calls under the active joblib backend, results in order."""
    results = joblib.Parallel(return_as="generator")(joblib.delayed(in_worker)(preload, function, *args)
                                                     for function, args in calls)
    return list(tqdm(results, total=len(calls), desc=desc, unit="part", disable=not progress, dynamic_ncols=True))


def run_shards(calls: list[tuple[Callable, tuple]], total: int, progress: bool, desc: str, on_result=None,
               preload: tuple[str, ...] = (), done: int = 0, unit: str = "img") -> list[dict]:
    """Run a set's shard tasks, (function, args) calls, under the active joblib backend, as they finish,
    with a progress bar: over the set's `total` images (`done` of them already there), as each result's
    "n_images" come in, or with `unit` "shard", one step per call. `on_result(result, write)` sees every
    result as it comes (`write` prints above the bar). Each result gets the moment it arrived, "arrived"
    (time.perf_counter of this process), for `timeline`."""
    results = []
    if unit != "img":
        total, done = len(calls), 0
    with tqdm(total=total, initial=done, unit=unit, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        tasks = (joblib.delayed(in_worker)(preload, function, *args) for function, args in calls)
        for result in joblib.Parallel(return_as="generator_unordered")(tasks):
            result["arrived"] = time.perf_counter()
            results.append(result)
            bar.update(result["n_images"] if unit == "img" else 1)
            if on_result is not None:
                on_result(result, bar.write)
    return results


def timeline(results: list[dict], started: float, ended: float, workers: int) -> dict:
    """Where the wall time of a parallel phase (`started` .. `ended`) went, from its task results (each with
    its own "seconds" of work and the moment it "arrived"): how busy the workers were (their tasks' seconds
    over workers x wall time); how long some of them sat idle at the end for want of tasks (from the result
    that left fewer tasks than workers to the last result); and how long the phase waited after its last
    result (the flush of shards to disk). Scaling that falls short of linear shows up here, or else as
    stage times per image that grow with the number of workers (contention)."""
    wall = ended - started
    arrivals = sorted(r["arrived"] for r in results)
    if not arrivals or wall <= 0:
        return {"workers_busy": None, "tail_seconds": 0.0, "after_last_result_seconds": 0.0}
    idle_from = arrivals[len(arrivals) - workers] if len(arrivals) >= workers else started
    return {"workers_busy": round(sum(r["seconds"] for r in results) / (workers * wall), 3),
            "tail_seconds": round(arrivals[-1] - idle_from, 3),
            "after_last_result_seconds": round(ended - arrivals[-1], 3)}
