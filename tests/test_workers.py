"""Worker pools end whatever the launcher did to SIGTERM: a process started with SIGTERM ignored (children inherit
it) used to wait forever for pool workers that Pool.terminate() could not stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


def run_ignoring_sigterm(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_a_pool_that_finished_ends_when_sigterm_is_ignored(start_method: str) -> None:
    result = run_ignoring_sigterm(f"""
        from zf_pipeline.workers import process_pool
        with process_pool(2, {start_method!r}) as pool:
            print(sum(pool.map(abs, [-1, -2, -3])))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6"


def test_a_pool_whose_block_raised_is_terminated_when_sigterm_is_ignored() -> None:
    # The block raises while the workers are busy: terminate() must stop them, so SIGTERM is theirs again.
    result = run_ignoring_sigterm("""
        import time
        from zf_pipeline.workers import process_pool
        try:
            with process_pool(2) as pool:
                pool.map_async(time.sleep, [30, 30])
                time.sleep(0.5)
                raise RuntimeError("boom")
        except RuntimeError as error:
            print("raised", error)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "raised boom"


def test_the_initializer_still_runs() -> None:
    result = run_ignoring_sigterm("""
        import os
        from zf_pipeline.workers import process_pool
        os.umask(0o022)
        with process_pool(1, initializer=os.umask, initargs=(0o077,)) as pool:
            print(oct(pool.apply(os.umask, (0o077,))))  # umask returns the mask the initializer set
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0o77"


def child_state_after_parent_killed(die: bool) -> str:
    """Start a parent that starts a sleeping child (calling die_with_parent or not), SIGKILL the parent, and read
    the child's state: 'gone', or its /proc state letter ('Z' once it has died, unreaped)."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c",
            "from zf_pipeline.workers import die_with_parent\\n"
            + ("die_with_parent()\\n" if {die!r} else "")
            + "print('ready', flush=True)\\nimport time\\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\\n"
        print(child.pid, flush=True)
        import time
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    state = "gone"
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"
        if state == "Z" or not die:
            break
        time.sleep(0.1)
    if state not in ("gone", "Z"):
        os.kill(pid, signal.SIGKILL)
    return state


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_that_asked_dies_with_its_parent() -> None:
    """A training child (assets.parallel, assets.pipes_train) must not outlive a kill -9 of the run."""
    assert child_state_after_parent_killed(die=True) in ("gone", "Z")
    assert child_state_after_parent_killed(die=False) not in ("gone", "Z")  # what it prevents
