"""A sandbox run releases everything it took, whatever raises on the way, and a full uid pool fails a
run at once instead of blocking every later one.

The flood that found it: items whose completion or test held a lone UTF-16 surrogate (valid JSON)
made the strict UTF-8 write of the program raise after a uid was taken and a work directory made,
outside the run's ``try``; each item leaked 2 uids, 4 fds and 2 directories, and once the pool's
uids were gone ``acquire`` spun forever under its lock, holding the reward service's only batch.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from polyray import sandbox as sb
from polyray.lifetime import process_dir
from polyray.sandbox import SandboxBusyError, SandboxLimits, _UidPool
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check

pytestmark = pytest.mark.slow  # sandboxes start in fresh interpreters


def _held() -> tuple[int, int, int, int]:
    """(open fds, sandbox uids in use, work directories, threads) of this process."""
    work = process_dir(sb.WORK_ROOT)
    return len(os.listdir("/proc/self/fd")), sb._UIDS.in_use(), len(os.listdir(work)), threading.active_count()


@pytest.mark.parametrize("where", ["completion", "test"])
def test_text_that_is_no_utf8_fails_its_item_and_leaks_nothing(where):
    problem = dict(humaneval_problems()["HumanEval/53"])
    completion = "    return x + y\n"
    if where == "completion":
        completion += "# \ud800\n"
    else:
        problem["test"] += "\n# \udfff\n"
    before = _held()
    for _ in range(20):
        result = run_humaneval_check(problem, completion, timeout=10)
        assert result.status == "error" and not result.passed, result
        assert "could not start the sandbox" in result.reason and "surrogate" in result.reason, result.reason
    deadline = time.monotonic() + 5  # the candidate's thread ends once the tests' run has
    while _held() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _held() == before
    # and the same problem still judges an honest completion
    assert run_humaneval_check(problem if where == "completion" else humaneval_problems()["HumanEval/53"],
                               "    return x + y\n", timeout=10).passed  # fmt: skip


def test_a_full_uid_pool_fails_at_once():
    pool = _UidPool(70000, 70002)
    uids = {pool.acquire() for _ in range(3)}
    assert uids == {70000, 70001, 70002}
    start = time.monotonic()
    with pytest.raises(SandboxBusyError, match="all 3 sandbox uids are in use"):
        pool.acquire()
    assert time.monotonic() - start < 1
    pool.release(70001)
    assert pool.acquire() == 70001


def test_a_run_with_no_free_uid_is_an_error_result(monkeypatch):
    if sb.detect_isolation() != "uid+namespaces":
        pytest.skip("needs the uid+namespaces mode (root with namespaces)")
    full = _UidPool(70000, 70000)
    full.acquire()
    monkeypatch.setattr(sb, "_UIDS", full)
    before = len(os.listdir("/proc/self/fd")), len(os.listdir(process_dir(sb.WORK_ROOT)))
    result = sb.run_python("print('hi')", SandboxLimits(timeout_s=10))
    assert result.status == "error" and "sandbox uids are in use" in result.reason, result
    assert (len(os.listdir("/proc/self/fd")), len(os.listdir(process_dir(sb.WORK_ROOT)))) == before
