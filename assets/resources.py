"""Resources: where the data is and where outputs go, from environment variables.

| variable | meaning | default |
| --- | --- | --- |
| ZF_OUTPUT_ROOT | every asset's output folder | ``./outputs`` |
| ZF_IMAGENET_ROOT | ImageNet (``train/``, ``val/`` folders or the official tars + devkit) | the generated demo |
| ZF_CALTECH101_ROOT | Caltech-101 (holding ``101_ObjectCategories``) | the demo's target set |
| ZF_CALTECH256_ROOT | Caltech-256 (holding ``256_ObjectCategories``) | not evaluated |
| ZF_VOC2012_ROOT | PASCAL VOC 2012 (holding ``VOCdevkit/VOC2012`` or ``JPEGImages``) | not evaluated |
| ZF_DEVICE | torch device for training / extraction | ``cuda`` if available, else ``cpu`` |
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from zf_pipeline.data.readers import ROOT_ENV
from zf_pipeline.io import write_bytes_atomic


class ZFSettings(dg.ConfigurableResource):
    """Paths and device. Empty strings mean "not configured" (the demo stands in where it can)."""

    output_root: str = "outputs"
    imagenet_root: str = ""
    caltech101_root: str = ""
    caltech256_root: str = ""
    voc2012_root: str = ""
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

    def torch_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def use_compile(self, requested: bool | None) -> bool:
        """An asset's ``compile`` option: as set, or when unset (None), on a GPU only. There a compiled
        pass pays for its compilation; the demo's short passes on the CPU would not."""
        return self.torch_device().startswith("cuda") if requested is None else requested

    def record(self, asset: str) -> dict:
        """What an asset's last materialization returned (stored by :class:`JsonIOManager`)."""
        path = self.out / "_records" / f"{asset}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialize {asset} first")
        return json.loads(path.read_text())

    @classmethod
    def from_env(cls) -> "ZFSettings":
        return cls(
            output_root=os.environ.get("ZF_OUTPUT_ROOT", "outputs"),
            device=os.environ.get("ZF_DEVICE", ""),
            **{f"{name}_root": os.environ.get(var, "") for name, var in ROOT_ENV.items()},
        )


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores each asset's small summary record (paths, fingerprint, counts) as JSON: no pickles.

    The heavy data lives in the content-addressed folders the records point to.
    """

    base_dir: str = "outputs/_records"

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.base_dir).joinpath(*key.path).with_suffix(".json")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        write_bytes_atomic(self._path(context.asset_key), json.dumps(obj, indent=2, default=str).encode())

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context.upstream_output.asset_key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: materialize {context.upstream_output.asset_key.to_user_string()} first "
                "(e.g. `dagster asset materialize -m assets --select '*<asset>'`)"
            )
        return json.loads(path.read_text())
