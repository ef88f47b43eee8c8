"""Data assets (paper section 3.1): the source images, WebDataset shards, the per-pixel mean.

"Each RGB image was preprocessed by resizing the smallest dimension to 256, cropping the center
256x256 region, subtracting the per-pixel mean (across all images)". With no ImageNet configured
the generated demo stands in (128 px shards, 112 px crops, so it trains on a laptop CPU).
"""


import io
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from PIL import Image

from assets.cache import cached_stage, code_version, fingerprint
from assets.metadata import image_md, record_md
from assets.resources import ZFSettings
from zf_pipeline import render
from zf_pipeline.data import demo, pixel_mean, preprocess, readers, shard_format, shards
from zf_pipeline.data.records import ImageSet
from zf_pipeline.io import root_relative

PAPER_SIZE, DEMO_SIZE = 256, 128
SHARD_CODE = code_version(readers, preprocess, shard_format, shards)


class DemoConfig(dg.Config):
    """Size of the generated demo (used only when ZF_IMAGENET_ROOT is unset)."""

    seed: int = 0
    train_per_class: int = 200
    val_per_class: int = 50
    target_per_class: int = 60


class ShardConfig(dg.Config):
    """Sharding settings; 0 means the default (size 256 as in the paper, 128 on the demo)."""

    size: int = 0
    quality: int = 90
    images_per_shard: int = 0
    seed: int = 0
    workers: int = 0


def image_size(settings: ZFSettings, config: ShardConfig) -> int:
    return config.size or (DEMO_SIZE if settings.demo else PAPER_SIZE)


def sample_grid(shard_dir: Path, count: int = 32) -> Path:
    """The first ``count`` samples of the first shard, captioned with their class, as a PNG."""
    path = shard_dir / "samples.png"
    if not path.exists():
        names = shard_format.load_classes(shard_dir)[1]
        samples = list(itertools.islice(shard_format.iter_shard(shard_format.shard_paths(shard_dir)[0]), count))
        images = [Image.open(io.BytesIO(s.jpeg)) for s in samples]
        render.render_samples(images, [names[s.label] if s.label >= 0 else "?" for s in samples], path)
    return path


@dg.asset(group_name="data", kinds={"python"}, code_version=code_version(demo))
def source_images(context: dg.AssetExecutionContext, config: DemoConfig, settings: ZFSettings) -> dict:
    """Where the images are: ImageNet 2012 (ZF_IMAGENET_ROOT) and the transfer datasets, or the generated demo.

    The demo (docs/demo.md) is an ImageNet-layout source set and a Caltech-101-layout target set of
    procedurally drawn shapes; it is generated on first use, deterministically from the seed.
    """
    roots = {name: settings.dataset_root(name) for name in readers.ROOT_ENV}
    if settings.demo:
        paths = demo.make_demo(
            settings.out / "demo",
            seed=config.seed,
            image_size=DEMO_SIZE,
            train_per_class=config.train_per_class,
            val_per_class=config.val_per_class,
            target_per_class=config.target_per_class,
        )
        roots["imagenet"] = str(paths.source)
        roots["caltech101"] = roots["caltech101"] or str(paths.target)
        roots["correspondence"] = str(paths.correspondence)
    record = {"demo": settings.demo, "roots": roots}
    context.add_output_metadata({"demo": settings.demo, "roots": dg.MetadataValue.json(roots)})
    return record


def _listing_fingerprint(images: ImageSet, root: Path) -> str:
    """The upstream data version of a dataset on disk: its listing (ids and sources) and classes; sources
    inside the output ``root`` (the demo) count relative to it, so a moved root keeps its fingerprints."""
    return fingerprint(
        images.classes, [(r.image_id, root_relative(r.source, root), r.label, r.labels) for r in images.records]
    )


def shard_asset(name: str, kind: str, split: str, description: str) -> dg.AssetsDefinition:
    """An asset writing one split of one dataset to WebDataset shards (cached by content)."""

    @dg.asset(
        name=name,
        group_name="data",
        kinds={"webdataset", "parquet"},
        code_version=SHARD_CODE,
        description=description,
    )
    def _shards(
        context: dg.AssetExecutionContext, config: ShardConfig, settings: ZFSettings, source_images: dict
    ) -> dict:
        root = source_images["roots"][kind]
        if not root:
            raise dg.Failure(f"{kind} is not configured: set {readers.ROOT_ENV[kind]} (see data/README.md)")
        images = readers.open_imageset(kind, root, split)
        size = image_size(settings, config)
        options = {
            "size": size,
            "quality": config.quality,
            "images_per_shard": config.images_per_shard or shards.DEFAULT_IMAGES_PER_SHARD,
            "seed": config.seed,
        }
        context.log.info(f"{name}: {len(images)} images of {len(images.classes)} classes from {root}")
        if settings.demo and settings.dataset_root(kind):
            context.log.info(f"{name}: your images are sharded at the demo's {size} px, the size the demo-trained "
                             f"network sees (no ZF_IMAGENET_ROOT); with ImageNet set, at the paper's {PAPER_SIZE} px "
                             "(docs/datasets.md, 'Real target data on the demo network')")
        record = cached_stage(
            settings.out,
            name,
            [SHARD_CODE, options, _listing_fingerprint(images, settings.out)],
            lambda out: shards.write_shards(images, out, workers=config.workers or None, **options),
            context.log.info,
        )
        context.add_output_metadata(
            {
                **record_md(record),
                "images_in": record["images_in"],
                "images_written": record["images_written"],
                "images_skipped": record["images_skipped"],
                "shards": len(record["shards"]),
                "shard_mb": round(record["shard_bytes"] / 2**20, 1),
                "classes": record["classes"],
                "size": size,
                "samples": image_md(sample_grid(Path(record["path"])), title="first samples of the first shard"),
            }
        )
        return record

    @dg.asset_check(asset=_shards, name="images_accounted_for", blocking=True)
    def _accounted(context: dg.AssetCheckExecutionContext, settings: ZFSettings) -> dg.AssetCheckResult:
        """Images in = images written + images skipped, and the manifest and skip list agree with the summary."""
        record = settings.record(name)
        out = Path(record["path"])
        manifest, skipped = shard_format.load_manifest(out), shard_format.load_skipped(out)
        ok = (
            record["images_in"] == record["images_written"] + record["images_skipped"]
            and manifest.num_rows == record["images_written"]
            and skipped.num_rows == record["images_skipped"]
        )
        # Reasons read "<kind>: <detail>": count the kinds.
        reasons = Counter(reason.split(":")[0] for reason in skipped.column("reason").to_pylist())
        return dg.AssetCheckResult(
            passed=ok,
            metadata={
                "images_in": record["images_in"],
                "manifest_rows": manifest.num_rows,
                "skipped_rows": skipped.num_rows,
                "skip_reasons": dg.MetadataValue.json(dict(reasons)),
            },
        )

    return [_shards, _accounted]


class PixelMeanConfig(dg.Config):
    workers: int = 0


@dg.asset(group_name="data", kinds={"numpy"}, code_version=code_version(pixel_mean))
def pixel_mean_image(
    context: dg.AssetExecutionContext, config: PixelMeanConfig, settings: ZFSettings, imagenet_train_shards: dict
) -> dict:
    """The per-pixel mean image over the training set (size x size x 3, RGB 0..255), subtracted from every input."""

    def build(out: Path) -> dict:
        mean = pixel_mean.compute_pixel_mean(imagenet_train_shards["path"], workers=config.workers or None)
        pixel_mean.save_pixel_mean(out / "pixel_mean.npy", mean)
        return {
            "file": str(out / "pixel_mean.npy"),
            "shape": list(mean.shape),
            "rgb_mean": mean.mean(axis=(0, 1)).tolist(),
        }

    record = cached_stage(
        settings.out,
        "pixel_mean",
        [code_version(pixel_mean), imagenet_train_shards["fingerprint"]],
        build,
        context.log.info,
    )
    context.add_output_metadata(
        {**record_md(record), "rgb_mean": dg.MetadataValue.json([round(v, 2) for v in record["rgb_mean"]])}
    )
    return record


@dataclass(frozen=True)
class ImageSplit:
    """One split of one dataset: sharded as ``<key>_shards``, its features extracted as ``features_<key>``."""

    key: str
    kind: str  # a readers kind; its root is ZFSettings.<kind>_root
    split: str
    about: str  # what the images are
    used_by: str = ""  # what its features feed; "": no features asset (ImageNet train)


IMAGE_SPLITS = (
    ImageSplit("imagenet_train", "imagenet", "train", "ImageNet 2012 train (or the demo source), shuffled"),
    ImageSplit(
        "imagenet_val", "imagenet", "val", "ImageNet 2012 validation (or the demo source's val)", "top-9 mining, Fig. 8"
    ),
    ImageSplit("caltech101", "caltech101", "all", "Caltech-101 (or the demo target set), all images", "Tables 4, 7"),
    ImageSplit("caltech256", "caltech256", "all", "Caltech-256, all images", "Tables 5, 7, Fig. 7"),
    ImageSplit("voc2012_train", "voc2012", "train", "PASCAL VOC 2012 train", "Table 6"),
    ImageSplit("voc2012_val", "voc2012", "val", "PASCAL VOC 2012 val", "Table 6"),
)
DEMO_KINDS = ("imagenet", "caltech101")  # always present: the demo stands in when their roots are not set


def configured_splits(settings: ZFSettings) -> list[ImageSplit]:
    """The splits that get assets: ImageNet and Caltech-101 always, the others once their root is set."""
    return [s for s in IMAGE_SPLITS if s.kind in DEMO_KINDS or settings.dataset_root(s.kind)]


def data_assets(settings: ZFSettings) -> list:
    """The data group: source, the shards of every configured split, the pixel mean."""
    defs = [source_images, pixel_mean_image]
    for s in configured_splits(settings):
        defs += shard_asset(f"{s.key}_shards", s.kind, s.split, f"{s.about}.")
    return defs
