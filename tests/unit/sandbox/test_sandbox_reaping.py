"""Nothing a sandbox started outlives it: cancelled runs, cancelled reward requests, hostile programs.

Checked from outside with real processes: sleepers carry a marker in their command line
(:func:`processes.processes_with`), and the test process makes itself a child subreaper, so an
orphan or a zombie that escaped the launcher would be re-parented to it (and counted) instead of
vanishing into the host's init. Every isolation mode that works here, ``rlimits`` included (its
audit hook is switched off first, as an adversary would).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import textwrap
import threading
import time

import pytest

from polyray import sandbox as sb
from polyray.reward.base import RewardItem
from polyray.reward.cancel import await_job
from polyray.reward.scorer import RewardScorer, ScoreJob, score_jobs
from polyray.tasks.humaneval import humaneval_problems
from support.processes import UNGUARD, processes_with, working_modes

# ~25 s; serial: its wall-clock bounds (a timeout enforced in seconds) are for a machine it has to itself
pytestmark = [pytest.mark.slow, pytest.mark.serial]

PR_SET_CHILD_SUBREAPER = 36
MODES = list(working_modes())


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def subreaper():
    """This process adopts every orphan below it while the test runs; yields a function listing them."""
    libc = ctypes.CDLL(None, use_errno=True)
    before = set(sb._descendants(os.getpid()))  # what earlier tests of the session left running (Ray, vLLM)

    def new_descendants() -> list[int]:
        return sorted(set(sb._descendants(os.getpid())) - before)

    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield new_descendants
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        leftovers = new_descendants()
        for pid in leftovers:  # never leave a test's leftovers behind; the session's own processes stay
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for pid in leftovers:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def sleeper(marker: str) -> str:
    """A program that leaves a sleeping process (its own session, marked) and then sleeps itself; in
    ``rlimits`` mode, which refuses new processes, it becomes the marked sleeper itself."""
    return UNGUARD + textwrap.dedent(f"""
        import os, sys, time
        try:
            if os.fork() == 0:
                os.setsid()
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
        except PermissionError:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
        time.sleep(600)
    """)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_cancelled_run_leaves_no_process(mode, subreaper, tmp_path, monkeypatch):
    monkeypatch.setattr(sb.tempfile, "tempdir", str(tmp_path))  # the launcher's command line names its directory
    marker = f"polyray-cancel-{os.getpid()}-{mode}"
    stop, results = threading.Event(), []
    thread = threading.Thread(
        target=lambda: results.append(
            sb.run_python(sleeper(marker), sb.SandboxLimits(timeout_s=60), isolation=mode, cancel=stop)
        )
    )
    thread.start()
    assert wait_for(lambda: processes_with(marker), 20), "the sleeper never started"
    stop.set()
    started = time.monotonic()
    thread.join(10)
    assert not thread.is_alive() and results[0].status == "killed", results
    assert time.monotonic() - started < 3
    assert not processes_with(marker) and not processes_with(str(tmp_path))
    assert subreaper() == [], "orphans or zombies were left"
    assert not list(tmp_path.iterdir())  # the work directory is gone too


def test_cancelled_before_it_starts_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sb.tempfile, "tempdir", str(tmp_path))
    stop = threading.Event()
    stop.set()
    with sb.cancelled_by(stop):
        result = sb.run_python("print(1)")
    assert result.status == "killed" and result.duration_s == 0.0 and not list(tmp_path.iterdir())


def _sleeping_item(marker: str) -> RewardItem:
    problem = humaneval_problems()["HumanEval/0"]
    body = textwrap.indent(sleeper(marker) + "return False\n", "    ")
    return RewardItem(prompt=problem["prompt"], completion=body, metadata={"task_id": "HumanEval/0"})


def _honest_item() -> RewardItem:
    problem = humaneval_problems()["HumanEval/0"]
    return RewardItem(
        prompt=problem["prompt"], completion=problem["canonical_solution"], metadata={"task_id": "HumanEval/0"}
    )


def test_a_cancelled_reward_request_kills_its_sandboxes_and_spares_the_other_callers(subreaper, monkeypatch):
    """Two callers' items merged into one code_exec call (as the service's batch does); the first caller
    is cancelled while its candidate sleeps: its sandboxes die at once, the second caller's item is scored."""
    monkeypatch.setattr(sb, "_detected", MODES[0])
    scorer = RewardScorer({"code_exec": {"timeout_s": 60, "min_isolation": "rlimits", "allow_weak_sandbox": True}})
    marker = f"polyray-cancelled-request-{os.getpid()}"
    gone, kept = ScoreJob("code_exec", [_sleeping_item(marker)]), ScoreJob("code_exec", [_honest_item()])

    async def main():
        work = asyncio.create_task(asyncio.to_thread(score_jobs, scorer, [gone, kept]))
        caller = asyncio.create_task(await_job(asyncio.shield(work), gone.cancel))
        for _ in range(400):
            if processes_with(marker):
                break
            await asyncio.sleep(0.05)
        assert processes_with(marker), "the candidate never started"
        caller.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await caller
        started = time.monotonic()
        while processes_with(marker) and time.monotonic() - started < 3:
            await asyncio.sleep(0.05)
        assert not processes_with(marker), "the cancelled request's sandbox is still running"
        return await work

    out = asyncio.run(main())
    assert gone.cancel.is_set() and out[0][0].score == 0.0 and out[0][0].detail["status"] == "killed", out[0]
    assert out[1][0].score == 1.0, out[1]
    assert subreaper() == []


def test_a_request_past_its_deadline_is_stopped(subreaper, monkeypatch):
    monkeypatch.setattr(sb, "_detected", MODES[0])
    scorer = RewardScorer({"code_exec": {"timeout_s": 60, "min_isolation": "rlimits", "allow_weak_sandbox": True}})
    marker = f"polyray-deadline-{os.getpid()}"
    job = ScoreJob("code_exec", [_sleeping_item(marker)])

    async def main():
        work = asyncio.create_task(asyncio.to_thread(score_jobs, scorer, [job]))
        with pytest.raises(asyncio.TimeoutError):
            await await_job(asyncio.shield(work), job.cancel, timeout_s=3.0)
        return await asyncio.wait_for(work, 5)  # the worker thread ends soon after

    out = asyncio.run(main())
    assert out[0][0].detail["status"] == "killed" and not processes_with(marker)
    assert subreaper() == []


HOSTILE = {
    "sleeper": "import time\ntime.sleep(600)\n",
    # a daemon: fork, setsid, fork again, the middle one exits: the grandchild has no parent left in the run
    "double_fork_daemon": textwrap.dedent("""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", MARKER])
            os._exit(0)
        time.sleep(600)
    """),
    # a bounded fork tree (63 processes), each in its own session; the root exits 0 at once
    "fork_tree": textwrap.dedent("""
        import os, sys
        for depth in range(5):
            if os.fork() == 0 or os.fork() == 0:
                os.setsid()
                continue
            break
        if os.getpid() == ROOT:
            os._exit(0)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", MARKER])
    """),
    "exits_leaving_children": textwrap.dedent("""
        import os, sys
        for _ in range(5):
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", MARKER])
        os._exit(0)
    """),
}


def test_no_process_or_zombie_is_left_after_many_hostile_runs(mode, subreaper):
    marker = f"polyray-reaping-{os.getpid()}-{mode}"
    header = UNGUARD + f"import os\nMARKER = {marker!r}\nROOT = os.getpid()\n"
    runs = [name for name in sorted(HOSTILE) for _ in range(3)]
    results: list[sb.SandboxResult] = []

    def one(name: str) -> None:
        results.append(
            sb.run_python(header + HOSTILE[name], sb.SandboxLimits(timeout_s=1.5, processes=256), isolation=mode)
        )

    threads = [threading.Thread(target=one, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == len(runs) and all(r.status in ("timeout", "passed", "failed") for r in results), results
    assert not processes_with(marker), "processes outlived their sandbox"
    assert subreaper() == [], "orphans or zombies were re-parented out of the sandbox"
