"""Sharded passes: one process per GPU, each over its own shards, then one merge into one extraction."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from zf_pipeline.data.loader import Split, network_inputs
from zf_pipeline.features.extraction import extract
from zf_pipeline.features.schema import SUMMARY_FILE, ExtractionSummary
from zf_pipeline.io import atomic_path
from zf_pipeline.models.zfnet import ZFNet

log = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"


def parts_dir(out_dir: str | Path) -> Path:
    """Where the ranks of a sharded pass write their folders before the merge: ``<out_dir>.parts``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + PARTS_SUFFIX)


def extract_part(
    model: ZFNet,
    shards: Split,
    mean: torch.Tensor,
    out_dir: str | Path,
    *,
    split: str,
    rank: int,
    world_size: int,
    crop: int,
    input_scale: float = 1.0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    **kwargs,
) -> ExtractionSummary:
    """Rank ``rank`` of ``world_size``: :func:`extract` over ``shards.shards[rank::world_size]`` only, as ``split``.

    The part lands in ``parts_dir(out_dir)/rank-RRRRR-of-WWWWW`` (a complete extraction folder);
    :func:`merge_parts` joins the parts into ``out_dir``. ``mean`` is 3 x S x S on ``device``;
    ``kwargs`` go to :func:`extract`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    # num_images stays the whole split's: only the shard list is read.
    mine = replace(shards, shards=shards.shards[rank::world_size])
    if not mine.shards:
        raise ValueError(f"{shards.root}: {len(shards.shards)} shards leave none for rank {rank} of {world_size}")
    log.info("rank %d/%d: %d of %d shards of %s", rank, world_size, len(mine.shards), len(shards.shards), shards.root)
    batches = network_inputs(mine, mean, crop, batch_size, device, input_scale)
    part = parts_dir(out_dir) / f"rank-{rank:05d}-of-{world_size:05d}"
    return extract(model, batches, part, split=split, device=device, **kwargs)


def _complete_parts(parts_root: Path) -> tuple[list[Path], list[ExtractionSummary]]:
    """The rank folders of one sharded pass and their summaries; raises unless every rank finished."""
    parts = sorted(parts_root.glob("rank-*-of-*"))
    if not parts:
        raise FileNotFoundError(f"{parts_root}: no rank-*-of-* folders; expected the parts of a sharded extraction")
    world = {int(p.name.split("-of-")[1]) for p in parts}
    if len(world) != 1 or len(parts) != world.pop():
        raise ValueError(f"{parts_root}: found {[p.name for p in parts]}; "
                         "expected one complete part per rank of one world size")
    summaries = [ExtractionSummary.load(p) for p in parts]  # raises for a rank that did not finish
    layouts = [(s.split, s.layers, s.activation_layers, s.feature_layers) for s in summaries]
    for p, layout in zip(parts, layouts):
        if layout != layouts[0]:
            raise ValueError(f"{p}: its layers/split differ from {parts[0]}'s; the parts are not of one pass")
    return parts, summaries


def merge_parts(out_dir: str | Path) -> ExtractionSummary:
    """Join the rank folders of a sharded pass into ``out_dir``, the layout one :func:`extract` writes.

    Each rank's ``part-NNNNN`` files become ``part-RRRRR-NNNNN`` in the same hive partitions;
    ``_SUCCESS.json`` sums the parts and is written last. Fails, writing nothing, unless every
    rank's part is complete. The parts folder is removed afterwards.
    """
    parts_root = parts_dir(out_dir)
    parts, summaries = _complete_parts(parts_root)
    first = summaries[0]
    with atomic_path(out_dir) as tmp:
        for rank, part in enumerate(parts):
            for f in sorted(part.glob("*/layer=*/part-*.parquet")):
                dest = tmp / f.parent.relative_to(part) / f"part-{rank:05d}-{f.name.removeprefix('part-')}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        merged = replace(
            first, images=sum(s.images for s in summaries),
            activation_rows=sum(s.activation_rows for s in summaries),
            activation_bytes={n: sum(s.activation_bytes.get(n, 0) for s in summaries) for n in first.activation_layers},
            seconds=max(s.seconds for s in summaries),  # the ranks run side by side
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(asdict(merged), indent=1))
    shutil.rmtree(parts_root)
    log.info("merged %d parts (%d images) into %s", len(parts), merged.images, out_dir)
    return merged
