"""The worker processes of build, pack and dots, on a real loky executor: started ahead of the work and taken over by
it, and kept while they fill their caches."""
import os
import threading
import time

import joblib
import numpy as np
import pytest
from joblib.externals.loky import get_reusable_executor, reusable_executor

from synthgen import build, dots, pack
from synthgen.config import RunOptions
from synthgen.parallel import allow_growth, parallel_backend, workers_starting

KEPT: list = []  # what a worker's caches hold, in the worker


def _worker_pid() -> int:
    return os.getpid()


def _fill_cache(nbytes: int, allow: bool) -> int:
    if allow:
        allow_growth(1 << 30)
    KEPT.append(np.ones(nbytes, np.uint8))  # touched, so it counts in the worker's memory
    return os.getpid()


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)  # loky checks a worker's memory at most once a second
    return os.getpid()


@pytest.mark.parametrize("preload", [build.WORKER_MODULES, pack.WORKER_MODULES, dots.WORKER_MODULES],
                         ids=["build", "pack", "dots"])
def test_workers_started_ahead_are_the_ones_the_command_then_uses(preload):
    # build, pack and dots start their workers while they scan and check; they are only worth it if the
    # parallel phases that follow take them over instead of replacing them with new ones.
    run = RunOptions(workers=2)
    get_reusable_executor().shutdown(wait=True)
    with workers_starting(run, preload) as wait:
        wait()
        started = reusable_executor._executor
        assert started is not None and len(started._processes) == 2
        with parallel_backend(run):
            # eval, a builtin, runs in the worker without importing this test module (and the commands with it)
            seen = joblib.Parallel()(joblib.delayed(eval)(f"__import__('os').getpid(), {preload[0]!r} in "
                                                          "__import__('sys').modules") for _ in range(8))
    assert reusable_executor._executor is started and {pid for pid, _ in seen} <= set(started._processes)
    assert all(imported for _, imported in seen)  # the command's modules were imported during the start


def test_a_failed_command_waits_for_the_workers_it_started():
    # A command that fails in its checks must not leave a start running behind its error message.
    get_reusable_executor().shutdown(wait=True)
    with pytest.raises(RuntimeError, match="a check failed"):
        with workers_starting(RunOptions(workers=2), pack.WORKER_MODULES):
            raise RuntimeError("a check failed")
    assert not any(t.name == "synthgen-start-workers" for t in threading.enumerate())
    assert len(reusable_executor._executor._processes) == 2


@pytest.mark.filterwarnings("ignore:A worker stopped while some jobs")  # loky's word for the replacement
@pytest.mark.parametrize("allow", [False, True])
def test_a_worker_that_grows_by_its_caches_is_kept(allow):
    pytest.importorskip("psutil", reason="loky replaces growing workers only where psutil is installed")
    get_reusable_executor().shutdown(wait=True)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        before = set(joblib.Parallel()(joblib.delayed(_worker_pid)() for _ in range(4)))  # loky's baseline
        filled = set(joblib.Parallel()(joblib.delayed(_fill_cache)(350 << 20, allow) for _ in range(2)))
        joblib.Parallel()(joblib.delayed(_pid_after)(1.1) for _ in range(4))
        after = set(joblib.Parallel()(joblib.delayed(_pid_after)(0.2) for _ in range(8)))
    after |= set(reusable_executor._executor._processes)  # a replacement shows here even if it ran no task
    get_reusable_executor().shutdown(wait=True)
    assert filled <= before
    # Without the allowance loky takes 350 MB of cache for a leak and replaces the worker (its cache lost).
    assert (after <= before) == allow


def test_a_finished_set_run_again_starts_no_workers(tmp_path, capsys):
    # Run again on a finished set, a command has nothing to do: waiting for workers it started ahead (about
    # 0.7 s on 2 cores) was most of its time. A set that is not finished still gets them ahead.
    from synthgen.cli import main

    out = tmp_path / "set"
    two = ["--size", "64", "--no-progress", "--workers", "2"]
    assert main(["build", "--n", "20", "--out", str(out), *two]) == 0
    get_reusable_executor().shutdown(wait=True)
    idle = reusable_executor._executor
    assert main(["build", "--n", "20", "--out", str(out), *two]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert reusable_executor._executor is idle  # no executor was made, so no worker started
    assert main(["build", "--n", "30", "--out", str(out), *two]) == 0  # extended: work to do
    assert reusable_executor._executor is not idle and len(reusable_executor._executor._processes) == 2
