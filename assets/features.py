"""Feature assets (paper sections 4 and 5): layer-wise features to Parquet, top-9 mining with DuckDB.

One extraction pass per dataset writes every layer; each layer is its own asset key
(``features/<dataset>/<layer>``) so the UI shows, and later stages depend on, layers one by one.
The tables' schema and example queries: docs/schema.md.
"""

from pathlib import Path

import dagster as dg
import torch

from assets.cache import cached_stage, code_version
from assets.data import configured_splits
from assets.metadata import record_md
from assets.resources import ZFSettings
from zf_pipeline import evaluate, features, mining, query
from zf_pipeline.data import loader
from zf_pipeline.models import CONV_LAYERS, FEATURE_LAYERS, checkpoint

# A package's own source is its __init__ only: the modules of the pass are hashed one by one.
FEATURES_CODE = code_version(
    features, features.schema, features.outputs, features.writers, features.extraction, loader, evaluate
)
MINING_CODE = code_version(mining, query)


class ExtractionConfig(dg.Config):
    batch_size: int = 256
    compile: bool | None = None  # torch.compile a batch's device work; unset: on a GPU
    bf16: bool = True  # bf16 autocast on the GPU


def load_trained(record: dict, device: str) -> tuple[torch.nn.Module, dict]:
    """The trained network of a training record, and its training config (crop, input scale)."""
    return checkpoint.load_model(record["checkpoint"], device), record["config"]


def run_extraction(
    context: dg.AssetExecutionContext, settings: ZFSettings, config: ExtractionConfig, name: str, split: str,
    model_record: dict, shards_record: dict, mean_record: dict,
) -> dict:
    """Extract every feature layer of the trained model over one sharded split (cached by content)."""
    device = settings.torch_device()

    def build(out: Path) -> dict:
        model, cfg = load_trained(model_record, device)
        data = loader.open_split(shards_record["path"])
        mean = loader.load_mean(mean_record["file"], data.size).to(device)
        batches = loader.network_inputs(data, mean, cfg["crop"], config.batch_size, device, cfg["input_scale"])
        amp = torch.bfloat16 if config.bf16 and device.startswith("cuda") else None
        present = [layer for layer in FEATURE_LAYERS if layer in model.layers]
        summary = features.extract(
            model, batches, out / "extraction", split=split, layers=present,
            # fc units' activation rows only outside a training split: on ImageNet train they would be 7x the rows.
            activation_layers=[layer for layer in present if layer in CONV_LAYERS or split != "train"],
            device=device, autocast=amp, compile=settings.use_compile(config.compile),
        )
        query.write_views(out / "extraction")
        return {
            "extraction": str(out / "extraction"),
            "images": summary.images,
            "layers": list(summary.layers),
            "vector_length": {k: v.vector_length for k, v in summary.layers.items()},
            "seconds_pass": summary.seconds,
        }

    key = [
        FEATURES_CODE,
        config.model_dump(),
        model_record["fingerprint"],
        shards_record["fingerprint"],
        mean_record["fingerprint"],
    ]
    return cached_stage(settings.out, f"features_{name}", key, build, context.log.info)


def features_asset(name: str, shards_asset: str, split: str, description: str) -> list:
    """One multi-asset (the extraction pass over ``shards_asset``, one output per feature layer) and its check."""
    outs = {layer: dg.AssetOut(key=dg.AssetKey(["features", name, layer]), kinds={"pytorch", "parquet"},
                                description=f"{layer} features of {name} (docs/schema.md)")
            for layer in FEATURE_LAYERS}

    @dg.multi_asset(
        name=f"features_{name}",
        outs=outs,
        group_name="features",
        code_version=FEATURES_CODE,
        ins={
            "model": dg.AssetIn("zfnet_model"),
            "shards": dg.AssetIn(shards_asset),
            "mean": dg.AssetIn("pixel_mean_image"),
        },
        description=description,
    )
    def _extract(
        context: dg.AssetExecutionContext,
        config: ExtractionConfig,
        settings: ZFSettings,
        model: dict,
        shards: dict,
        mean: dict,
    ):
        with settings.gpu_lock(context.log.info):
            record = run_extraction(context, settings, config, name, split, model, shards, mean)
        for layer in FEATURE_LAYERS:
            layer_dir = Path(record["extraction"]) / "features" / f"layer={layer}"
            yield dg.Output(
                {**record, "layer": layer, "layer_path": str(layer_dir)},
                output_name=layer,
                metadata={**record_md(record), "images": record["images"],
                          "vector_length": record["vector_length"].get(layer, 0), "present": layer_dir.exists()},
            )

    @dg.asset_check(asset=dg.AssetKey(["features", name, "conv1"]), name="rows_match_images_x_channels", blocking=True)
    def _rows(settings: ZFSettings) -> dg.AssetCheckResult:
        """Every layer's activation table has images x channels rows (from the Parquet footers)."""
        ok, message = mining.check_activation_counts(settings.record(f"features/{name}/conv1")["extraction"])
        return dg.AssetCheckResult(passed=ok, description=message)

    return [_extract, _rows]


class MiningConfig(dg.Config):
    k: int = 9
    threads: int = 0


def layer_deps(dataset: str) -> tuple[dict[str, dg.AssetIn], list[dg.AssetKey]]:
    """Depend on every layer of one extraction: conv1's record is loaded (all layers share the
    extraction folder), the other layers are plain dependencies."""
    keys = [dg.AssetKey(["features", dataset, layer]) for layer in FEATURE_LAYERS]
    return {"conv1": dg.AssetIn(keys[0])}, keys[1:]


@dg.asset(group_name="features", kinds={"duckdb", "parquet"}, code_version=MINING_CODE,
          ins=layer_deps("imagenet_val")[0], deps=layer_deps("imagenet_val")[1])
def top9(context: dg.AssetExecutionContext, config: MiningConfig, settings: ZFSettings, conv1: dict) -> dict:
    """Section 4.2: for every feature map of layers 1-5 (and fc units), the 9 validation images with the
    highest activation (ties by image_id), with where in the map it peaked; mined with DuckDB."""
    extraction = conv1["extraction"]

    def build(out: Path) -> dict:
        rows = mining.mine_top9(
            Path(extraction) / "activations", out / "top9.parquet", k=config.k, threads=config.threads or None
        )
        return {"file": str(out / "top9.parquet"), "rows": rows, "extraction": extraction, "k": config.k}

    record = cached_stage(
        settings.out, "top9", [MINING_CODE, config.model_dump(), conv1["fingerprint"]], build, context.log.info
    )
    # The README's entry point: the output root's views, over this run's extraction and top-9.
    query.write_views(settings.out, extraction, record["file"])
    context.add_output_metadata(
        {
            **record_md(record),
            "rows": record["rows"],
            "duckdb": dg.MetadataValue.md(
                f"```\ncd {settings.out} && duckdb -init views.sql\n```\n"
                f"or in Python: `zf_pipeline.query.connect({str(settings.out)!r})`"
            ),
        }
    )
    return record


@dg.asset_check(asset=top9, blocking=True)
def top9_complete(settings: ZFSettings) -> dg.AssetCheckResult:
    """Every map has exactly min(9, images) rows, ranked 1..n."""
    record = settings.record("top9")
    ok, message = mining.check_top_counts(record["file"], record["extraction"], record["k"])
    return dg.AssetCheckResult(passed=ok, description=message)


def feature_assets(settings: ZFSettings) -> list:
    """The features group: an extraction of every configured split that feeds a table or figure, and top-9."""
    defs = [top9, top9_complete]
    for s in configured_splits(settings):
        if s.used_by:
            defs += features_asset(s.key, f"{s.key}_shards", s.split, f"Features of {s.about} ({s.used_by}).")
    return defs
