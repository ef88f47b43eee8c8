"""Worker pools end whatever the launcher did to SIGTERM: a process started with SIGTERM ignored (children inherit
it) used to wait forever for pool workers that Pool.terminate() could not stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

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
