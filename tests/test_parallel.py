"""bench.parallel.call_concurrently: results in the order of the calls, each worker on the threads asked for,
a call's exception raised in the caller."""
import os
import time

import pytest

from cpfs_bench.bench.parallel import call_concurrently


def torch_threads(name="", wait_for=None, then_touch=None) -> tuple[str, int, int]:
    """(name, pid, torch threads), after the file wait_for appears (60 s at most) and touching then_touch."""
    import torch

    deadline = time.monotonic() + 60
    while wait_for is not None and not os.path.exists(wait_for) and time.monotonic() < deadline:
        time.sleep(0.05)
    if then_touch is not None:
        open(then_touch, "w").close()
    return name, os.getpid(), torch.get_num_threads()


def fail(message: str):
    raise ValueError(message)


def test_results_come_in_call_order_from_concurrent_processes_on_the_threads_asked_for(tmp_path):
    # the first call can only finish after the second has run (so both ran at once), and comes first
    flag = tmp_path / "second-ran"
    started = time.monotonic()
    out = call_concurrently([(torch_threads, ("first",), {"wait_for": flag}),
                             (torch_threads, ("second",), {"then_touch": flag})],
                            workers=2, threads=1)
    assert time.monotonic() - started < 60, "the first call timed out waiting: the calls did not run at once"
    (name_a, pid_a, threads_a), (name_b, pid_b, threads_b) = out
    assert (name_a, name_b) == ("first", "second")
    assert threads_a == threads_b == 1
    assert len({pid_a, pid_b, os.getpid()}) == 3


def test_one_worker_runs_in_this_process():
    assert call_concurrently([(torch_threads, (), {})], workers=1)[0][1] == os.getpid()


def test_an_exception_in_a_call_reaches_the_caller():
    with pytest.raises(ValueError, match="bad input file"):
        call_concurrently([(torch_threads, (), {}), (fail, ("bad input file",), {})], workers=2)
