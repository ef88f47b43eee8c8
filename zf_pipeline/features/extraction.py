"""One pass of a trained net over a split, written to the ``activations`` and ``features`` tables."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from zf_pipeline.features.outputs import batch_outputs, forward, layer_shapes, outputs_agree
from zf_pipeline.features.schema import SUMMARY_FILE, ExtractionSummary, LayerInfo
from zf_pipeline.features.writers import HostRing, WriterOptions, Writers
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import FEATURE_LAYERS, ZFNet

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


@functools.cache
def torch_compile(fn: Callable) -> Callable:
    """``fn`` compiled once per process, so that later passes reuse its graphs (one per batch shape and layer
    choice) instead of recompiling a fresh closure each time (dynamo falls back to eager after 8)."""
    return torch.compile(fn, dynamic=False)


class _DeviceStep:
    """The device work of one batch, from the images to the packed outputs in a host slot.

    Compiled, a batch is two graphs: the forward, then the maxima, vectors and packing. Two, not one: in one
    graph inductor (torch 2.11) computed wrong map maxima for a trained net on an H100. The first compiled
    batch of each size (each has its own graphs) is checked against the eager pass; on a disagreement the
    pass warns and runs eager.
    """

    def __init__(self, model: ZFNet, act_layers: Sequence[str], layers: Sequence[str], device: torch.device,
                 autocast: torch.dtype | None, compiler: Callable[[Callable], Callable] | None, split: str):
        self.model, self.device, self.autocast, self.split = model, device, autocast, split
        self.act_layers, self.layers = tuple(act_layers), tuple(layers)
        self.names = tuple(dict.fromkeys([*act_layers, *layers]))
        self.forward, self.outputs = forward, batch_outputs
        if compiler:
            self.forward, self.outputs = compiler(forward), compiler(batch_outputs)
        self.checked: set[int] = set()  # batch sizes whose compiled graphs agreed with eager
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # checked once at the end: no wait per batch

    def shapes(self, images: torch.Tensor) -> dict[str, LayerInfo]:
        """The layers' shapes, from the first batch; fixes every activations column's map width."""
        shapes = layer_shapes(self.model, images.to(self.device), self.act_layers, self.layers)
        widths = [shapes[n].width for n in self.act_layers for _ in range(shapes[n].channels)]
        self.widths = torch.tensor(widths, dtype=torch.int32, device=self.device)
        return shapes

    def __call__(self, ring: HostRing, images: torch.Tensor, labels: torch.Tensor, image_ids: list[str]) -> None:
        """Queue one batch on the device and its copy into a host slot, then hand the slot to ``ring``."""
        images = images.to(self.device, non_blocking=True)
        slot = ring.acquire()  # the loop's only wait: for a slot the copier has not emptied yet
        amp = torch.autocast(self.device.type, self.autocast or torch.float32, enabled=self.autocast is not None)
        with torch.inference_mode(), amp:
            if labels.device.type == "cpu":
                labels = slot.upload(labels.numpy().astype(np.int64))
            else:
                labels = labels.to(self.device, non_blocking=True)
            packed, finite = self._outputs(ring.writers, images, labels)
            self.finite &= finite
            slot.download(packed)
        ring.send(slot, image_ids)

    def _outputs(self, writers: Writers, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = (self.model, self.act_layers, self.layers, self.widths)
        packed, finite = self.outputs(*args, self.forward(self.model, self.names, images), labels)
        if self.forward is forward or len(images) in self.checked:
            return packed, finite
        self.checked.add(len(images))
        eager = batch_outputs(*args, forward(self.model, self.names, images), labels)
        if outputs_agree(writers, eager[0], packed, len(images)):
            return packed, finite
        log.warning("split %r: the compiled pass gave other map maxima or vectors than the eager one on a batch of %d "
                    "(a compiler bug); this pass runs eager", self.split, len(images))
        self.forward, self.outputs = forward, batch_outputs
        return eager


def _checked(batches: Iterable[Batch], split: str) -> Iterator[Batch]:
    """The batches, rejecting malformed ones and repeated image_ids (the tables are keyed by image_id)."""
    seen: set[str] = set()
    for images, labels, image_ids in batches:
        image_ids = list(image_ids)
        if images.dim() != 4 or len(labels) != len(images) or len(image_ids) != len(images):
            raise ValueError(
                f"split {split!r}: expected a batch of images [N,3,S,S], labels [N], N image_ids; got images "
                f"{tuple(images.shape)}, {len(labels)} labels, {len(image_ids)} ids (after {len(seen)} images)"
            )
        before = len(seen)
        seen.update(image_ids)
        if len(seen) != before + len(image_ids):
            raise ValueError(f"split {split!r}: duplicate image_id in the batch starting at {image_ids[0]!r}")
        yield images, labels, image_ids


def _finish(root: Path, summary: ExtractionSummary, ring: HostRing | None, finite: torch.Tensor,
            started: float) -> None:
    """Check the pass's outcome and write its summary, the last file of the folder."""
    if ring is None:
        raise ValueError(f"no batches: nothing to extract for split {summary.split!r}")
    if not finite:
        raise ValueError(f"split {summary.split!r}: non-finite map maxima (float16 overflows above 65504); "
                         "nothing was written")
    for name in summary.activation_layers:
        files = (root / "activations" / f"layer={name}").glob("*.parquet")
        summary.activation_bytes[name] = sum(f.stat().st_size for f in files)
    summary.activation_rows = ring.writers.activation_rows
    summary.seconds = time.monotonic() - started
    (root / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=1))


def extract(
    model: ZFNet,
    batches: Iterable[Batch],
    out_dir: str | Path,
    *,
    split: str,
    layers: Sequence[str] = FEATURE_LAYERS,
    activation_layers: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    compile: bool | Callable[[Callable], Callable] = False,
    writing: WriterOptions = WriterOptions(),
    writers: type[Writers] = Writers,
) -> ExtractionSummary:
    """One pass of ``model`` over ``batches``, writing ``out_dir/{activations,features}``.

    ``batches`` yields (images [N,3,S,S] float, preprocessed; labels [N] int; image_ids list[str]).
    ``layers`` get a ``features`` partition; ``activation_layers`` (default: the same layers) get
    ``activations`` rows. Layers absent from the model raise KeyError. ``autocast`` (e.g. torch.bfloat16)
    runs the net in reduced precision; ``compile``: True uses torch.compile, a function (fn -> compiled fn)
    is used in its place. ``writing`` sets the Parquet layout; ``writers`` is the class that encodes it.
    Nothing appears at ``out_dir`` unless the whole pass succeeds. Returns the summary also written as
    ``_SUCCESS.json``.
    """
    device = torch.device(device)
    act_layers = list(layers if activation_layers is None else activation_layers)
    missing = [name for name in dict.fromkeys([*layers, *act_layers]) if name not in model.layers]
    if missing:
        raise KeyError(f"layers {missing} are not in this network (it has {list(model.layers)})")
    if not act_layers and not layers:
        raise ValueError("no layers: give `layers` and/or `activation_layers`")
    summary = ExtractionSummary(split=split, images=0, activation_layers=act_layers, feature_layers=list(layers))
    compiler = compile if callable(compile) else torch_compile if compile else None
    step = _DeviceStep(model.eval().to(device), act_layers, layers, device, autocast, compiler, split)
    started = last_log = time.monotonic()
    with atomic_path(out_dir) as tmp:
        ring = None
        try:
            for images, labels, image_ids in _checked(batches, split):
                if ring is None:
                    summary.layers = step.shapes(images)
                    ring = HostRing(writers(Path(tmp), summary, writing), device)
                step(ring, images, labels, image_ids)
                summary.images += len(image_ids)
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    rate = summary.images / (last_log - started)
                    log.info("extraction of %r: %d images, %.0f img/s", split, summary.images, rate)
        finally:
            if ring is not None:
                ring.close()  # drains the slots, then closes the writers
        _finish(Path(tmp), summary, ring, step.finite, started)
    log.info("extracted %d images of split %r in %.1f s -> %s", summary.images, split, summary.seconds, out_dir)
    return summary
