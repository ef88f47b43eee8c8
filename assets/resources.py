"""Resources: where the data is and where outputs go, from environment variables.

- ZF_OUTPUT_ROOT: every asset's output folder (default ``./outputs``)
- ZF_IMAGENET_ROOT: ImageNet (``train/``, ``val/`` folders or the official tars + devkit); default: the generated demo
- ZF_CALTECH101_ROOT: Caltech-101 (holding ``101_ObjectCategories``); default: the demo's target set while ImageNet
  is the demo too, else not evaluated
- ZF_CALTECH256_ROOT: Caltech-256 (holding ``256_ObjectCategories``); default: not evaluated
- ZF_VOC2012_ROOT: PASCAL VOC 2012 (holding ``VOCdevkit/VOC2012`` or ``JPEGImages``); default: not evaluated
- ZF_CALTECH101_NAME, ZF_CALTECH256_NAME: what the images at that root are called in the tables (your own data);
  default: the paper's dataset name, ``demo_target`` on the demo
- ZF_DEVICE: torch device for training / extraction (checked when the code location loads); default ``cuda`` if
  available, else ``cpu``

GPU assets run one at a time per device and output root: each holds :meth:`ZFSettings.gpu_lock`, an
flock the OS releases when its process dies (even by ``kill -9``), so a killed run never blocks the next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from zf_pipeline.data.readers import ROOT_ENV
from zf_pipeline.io import folder_lock, read_record, write_record


def check_device(device: str) -> str:
    """``device`` (ZF_DEVICE) if torch can use it here; else an error naming ZF_DEVICE and what this machine has."""
    if not device:
        return device
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"ZF_DEVICE={device!r} is not a torch device: expected cpu, cuda or cuda:<index> ({e})") from e
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ValueError(f"ZF_DEVICE={device!r}, but this machine has {count} usable CUDA device(s): "
                             "unset ZF_DEVICE or set it to cpu" + (f" or cuda:0..cuda:{count - 1}" if count else ""))
    elif parsed.type != "cpu":
        raise ValueError(f"ZF_DEVICE={device!r}: the pipeline runs on cpu or cuda[:<index>]")
    return device


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fail_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None]) -> list[str]:
    """Mark as failed the runs still STARTED whose process (on this host) is gone: a ``kill -9`` or a closed
    terminal stops a run before it can record its end. Returns their run ids."""
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        starts = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
        pid = starts[0].event_log_entry.dagster_event.pid if starts else None
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, f"Marked failed by a later run: its process (pid {pid}) is gone.")
            log(f"run {run.run_id} was still STARTED but its process (pid {pid}) is gone: marked failed")
            failed.append(run.run_id)
    return failed


class ZFSettings(dg.ConfigurableResource):
    """Paths and device. Empty strings mean "not configured" (the demo stands in where it can)."""

    output_root: str = "outputs"
    imagenet_root: str = ""
    caltech101_root: str = ""
    caltech256_root: str = ""
    voc2012_root: str = ""
    caltech101_name: str = ""
    caltech256_name: str = ""
    device: str = ""

    @property
    def out(self) -> Path:
        return Path(self.output_root).resolve()

    @property
    def demo(self) -> bool:
        """True when no ImageNet is configured: the whole pipeline runs on the generated demo."""
        return not self.imagenet_root

    def dataset_root(self, name: str) -> str:
        return getattr(self, f"{name}_root")

    def dataset_name(self, kind: str) -> str:
        """What the images read as ``kind`` are called in tables: as the user names them (ZF_<KIND>_NAME),
        else the paper's dataset when its root is set, else the demo's target set that stands in."""
        named = getattr(self, f"{kind}_name", "")
        return named or (kind if self.dataset_root(kind) or not self.demo else "demo_target")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # At every run's start: runs whose process died unrecorded are marked failed, not left STARTED.
        if context.instance is not None:
            fail_dead_runs(context.instance, context.log.info if context.log else print)

    def torch_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def use_compile(self, requested: bool | None) -> bool:
        """An asset's ``compile`` option: as set, or when unset (None), on a GPU only. There a compiled
        pass pays for its compilation; the demo's short passes on the CPU would not."""
        return self.torch_device().startswith("cuda") if requested is None else requested

    @contextmanager
    def gpu_lock(self, log: Callable[[str], None]) -> Iterator[None]:
        """Hold this device's lock (under ``<output_root>/_locks/``) for the block: one GPU asset at a time.

        Take it before any cached stage's folder lock, so two runs always take locks in one order.
        """
        device = self.torch_device()
        name = "cuda:0" if device == "cuda" else device
        folder = self.out / "_locks" / name.replace(":", "-")
        with folder_lock(
            folder, waiting=lambda pid: log(f"waiting for the GPU lock ({name}) held by pid {pid}: {folder}/.lock")
        ):
            yield

    def record(self, asset: str) -> dict:
        """What an asset's last materialization returned (stored by :class:`JsonIOManager`)."""
        path = self.out / "_records" / f"{asset}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {asset} first")
        return read_record(path, self.out)

    @classmethod
    def from_env(cls) -> "ZFSettings":
        return cls(
            output_root=os.environ.get("ZF_OUTPUT_ROOT", "outputs"),
            device=check_device(os.environ.get("ZF_DEVICE", "")),
            **{f"{name}_root": os.environ.get(var, "") for name, var in ROOT_ENV.items()},
            **{f"{kind}_name": os.environ.get(f"ZF_{kind.upper()}_NAME", "") for kind in ("caltech101", "caltech256")},
        )


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores each asset's small summary record (paths, fingerprint, counts) as JSON: no pickles.

    The heavy data lives in the content-addressed folders the records point to. ``base_dir`` is
    ``<output_root>/_records``; paths inside the output root are stored relative to it.
    """

    base_dir: str = "outputs/_records"

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.base_dir).joinpath(*key.path).with_suffix(".json")

    @property
    def _root(self) -> Path:
        return Path(self.base_dir).resolve().parent

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        write_record(self._path(context.asset_key), obj, self._root)

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context.upstream_output.asset_key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: materialize {context.upstream_output.asset_key.to_user_string()} first "
                "(e.g. `dagster asset materialize -m assets --select '*<asset>'`)"
            )
        return read_record(path, self._root)
