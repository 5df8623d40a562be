"""The joblib backend a command runs its tasks on: local processes, or a dask.distributed cluster."""
from __future__ import annotations

import contextlib

import joblib

from synthgen.config import RunOptions
from synthgen.errors import UsageError


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
