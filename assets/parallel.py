"""Several trainings at once from one asset (Tables 1 and 2, Table 4's from-scratch rows).

A run on a small split leaves most of a GPU idle, so an asset with many of them starts ``jobs`` at once: each
the training CLI (``python -m zf_pipeline.train``'s ``main``) in a process of its own (``torch.compile`` and
CUDA state stay per process), waited on by a thread that also does the run's cheap host-side steps. The
threads only queue log lines; this module writes them to the Dagster log from the asset's own thread.
"""

from __future__ import annotations

import queue
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import dagster as dg

from zf_pipeline.train import TrainConfig

T = TypeVar("T")


def train_flags(run: TrainConfig) -> list[str]:
    """``run`` as ``python -m zf_pipeline.train`` flags (``parse_args`` of them gives ``run`` back)."""
    flags = []
    for name, value in run.to_dict().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):  # keep_epochs: an empty list keeps none
            flags += [flag, *map(str, value)]
        elif value is not None:
            flags.append(f"{flag}={value}")
    return flags


# ``python -m zf_pipeline.train`` that dies with the thread that started it (workers.die_with_parent).
_CHILD = """import sys
from zf_pipeline.workers import die_with_parent
die_with_parent()
from zf_pipeline.train import main
main(sys.argv[1:])
"""


class Trainings:
    """What a task gets: ``log`` (a line for the run log) and ``train`` (one run in its own process)."""

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.running: set[subprocess.Popen] = set()

    def log(self, message: str) -> None:
        self.messages.put(message)

    def train(self, run: TrainConfig) -> None:
        """Train ``run`` in a child process logging to ``<run.out>/train.log``; raises if it fails."""
        log_path = Path(run.out) / "train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, *train_flags(run)], stdout=log_file,
                                    stderr=subprocess.STDOUT)
            self.running.add(proc)
            self.log(f"training {run.arch} (seed {run.seed}) in pid {proc.pid}, its log: {log_path}")
            code = proc.wait()
            self.running.discard(proc)
        if code:
            raise RuntimeError(f"training {run.arch} (seed {run.seed}) failed with exit code {code}; "
                               f"its log: {log_path}")


def at_once(context: dg.AssetExecutionContext, tasks: Sequence[Callable[[Trainings], T]], jobs: int) -> list[T]:
    """Each task's result, in order, ``jobs`` tasks at a time. A failed task stops those not started and lets
    the running ones finish (their cached work stays for the next attempt); an interrupt, or a stop from the
    UI, terminates the training processes."""
    trainings = Trainings()

    def drain() -> None:
        while not trainings.messages.empty():
            context.log.info(trainings.messages.get())

    pool = futures.ThreadPoolExecutor(max(1, jobs))
    pending = [pool.submit(task, trainings) for task in tasks]
    try:
        while futures.wait(pending, timeout=10, return_when=futures.FIRST_EXCEPTION).not_done:
            drain()
            if any(f.done() and f.exception() for f in pending):
                break
    except BaseException:
        for proc in list(trainings.running):
            proc.terminate()
        raise
    finally:
        for f in pending:
            f.cancel()  # the tasks not started yet
        pool.shutdown(wait=True)
        drain()
    failed = [f for f in pending if not f.cancelled() and f.exception()]
    if failed:
        raise failed[0].exception()
    return [f.result() for f in pending]
