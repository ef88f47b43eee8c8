"""Visualization assets (paper section 4): Fig. 8 (top-9 projections), Fig. 3 (feature evolution),
Fig. 5 (occlusion), Fig. 4 (invariance) and Table 3 (correspondence). Each figure is a PNG shown in
the UI, with the numbers behind it as Parquet, reproducible from its config (cached by content).
"""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from assets.cache import cached_stage, code_version
from assets.metadata import image_md, record_md
from assets.resources import ZFSettings
from zf_pipeline import atlas as atlas_site
from zf_pipeline import deconv, render
from zf_pipeline.analysis import (
    correspondence,
    evolution,
    inputs,
    invariance,
    occlusion,
)
from zf_pipeline.analysis.inputs import ValImages, one_per_class, part_images
from zf_pipeline.io import write_table
from zf_pipeline.models import CONV_LAYERS, checkpoint, receptive_field

VIS_CODE = code_version(deconv, render, inputs, evolution, occlusion, invariance, correspondence)
UPSTREAM = {
    "model": dg.AssetIn("zfnet_model"),
    "val": dg.AssetIn("imagenet_val_shards"),
    "mean": dg.AssetIn("pixel_mean_image"),
}


def val_images(settings: ZFSettings, model: dict, val: dict, mean: dict) -> ValImages:
    """The validation images as the trained model of ``model`` (a zfnet_model record) sees them."""
    return ValImages(model["checkpoint"], model["config"]["crop"], model["config"]["input_scale"], val["path"],
                     mean["file"], settings.torch_device())


def _vis_stage(context, settings: ZFSettings, stage: str, config: dg.Config, upstream: list[dict], build) -> dict:
    key = [VIS_CODE, config.model_dump(), *[u["fingerprint"] for u in upstream]]
    return cached_stage(settings.out, stage, key, build, context.log.info)


class Fig8Config(dg.Config):
    layers: list[str] = list(CONV_LAYERS)
    maps: int = 16  # feature maps per layer: a fixed random sample (0: all)
    seed: int = 0
    norm: str = deconv.DEFAULT_NORM  # how contrast normalization is inverted: 'identity' or 'gradient'


@dg.asset(group_name="visualization", kinds={"pytorch", "png"}, code_version=VIS_CODE, ins=UPSTREAM)
def fig8(
    context: dg.AssetExecutionContext,
    config: Fig8Config,
    settings: ZFSettings,
    top9: dict,
    model: dict,
    val: dict,
    mean: dict,
) -> dict:
    """Fig. 8: for layers 1-5, the top-9 activations of sampled feature maps over the validation set, each
    projected to pixels with the deconvnet (section 2.1), beside the image patches that caused them;
    layer 1 also shows its filters."""

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        layers = [layer for layer in config.layers if layer in vis.net.layers]
        rows = render.shown_rows(pq.read_table(top9["file"]), layers, config.maps or None, config.seed)
        images = vis.lookup({r["image_id"] for r in rows})  # only the shown maps' images are loaded
        # rows hold the shown maps alone, so the figure takes all of them
        paths = render.render_fig8(vis.net, rows, images, out, layers, maps=None, norm=config.norm,
                                   mean=vis.display_mean)
        return {"pngs": {k: str(v) for k, v in paths.items()}}

    record = _vis_stage(context, settings, "fig8", config, [top9, model], build)
    context.add_output_metadata(
        {
            **record_md(record),
            **{
                f"fig8_{layer}": image_md(path, title=f"Fig. 8, {layer}")
                for layer, path in record["pngs"].items()
                if layer != "composed"
            },
        }
    )
    return record


class Fig3Config(dg.Config):
    layers: list[str] = list(CONV_LAYERS)
    maps: int = 6  # feature maps per layer
    images: int = 2000  # validation images searched for each map's strongest activation
    seed: int = 0


@dg.asset(group_name="visualization", kinds={"pytorch", "png"}, code_version=VIS_CODE, ins=UPSTREAM)
def fig3(
    context: dg.AssetExecutionContext, config: Fig3Config, settings: ZFSettings, model: dict, val: dict, mean: dict
) -> dict:
    """Fig. 3: the strongest activation of sampled feature maps, projected, at each kept training
    checkpoint (epochs 1, 2, 5, 10, 20, 30, 40, 64 where reached), one column per epoch."""

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        inputs = [x for x, _, _ in vis.batches(limit=config.images)]
        run = Path(model["path"])
        kept = sorted(run.glob("epoch_*.pt")) or [run / "last.pt"]
        epoch_of = {p: int(p.stem.split("_")[-1]) for p in kept if p.stem.startswith("epoch_")}

        last_epoch = model["final"].get("epochs_run", model["final"]["epochs"])

        def checkpoints():
            for path in kept:
                yield epoch_of.get(path, last_epoch), checkpoint.load_model(path, vis.device)

        maps = {layer: render.choose_maps(vis.net.get_submodule(layer).out_channels, config.maps, config.seed)
                for layer in config.layers if layer in vis.net.layers}
        pngs = {}
        for layer, evo in evolution.feature_evolution(checkpoints(), lambda: iter(inputs), maps).items():
            pngs[layer] = str(render.render_fig3(evo.projections, evo.ys, evo.xs, receptive_field(vis.net, layer),
                                                      evo.epochs, out / f"fig3_{layer}.png"))
        return {"pngs": pngs, "epochs": list(epoch_of.values())}

    record = _vis_stage(context, settings, "fig3", config, [model, val], build)
    context.add_output_metadata({**record_md(record), "epochs": dg.MetadataValue.json(record["epochs"]),
                                 **{f"fig3_{k}": image_md(v, title=f"Fig. 3, {k}") for k, v in record["pngs"].items()}})
    return record


class Fig5Config(dg.Config):
    images: int = 4  # validation images (the first of the split's order, one per class where possible)
    size: int = 0  # occluder side in pixels (0: a fifth of the input, 48 at 224 as in the paper's figures)
    stride: int = 0  # occluder step (0: a sixth of the size)


@dg.asset(group_name="visualization", kinds={"pytorch", "png", "parquet"}, code_version=VIS_CODE, ins=UPSTREAM)
def fig5(
    context: dg.AssetExecutionContext, config: Fig5Config, settings: ZFSettings, model: dict, val: dict, mean: dict
) -> dict:
    """Fig. 5: a grey square swept over the image; per position, the total activity of the strongest
    layer-5 map of the unoccluded image, the correct-class probability and the most probable label."""

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        picked = one_per_class(vis, config.images)
        size = config.size or max(8, round(vis.crop * 48 / 224))
        stride = config.stride or max(1, size // 6)
        images, labels = [x for x, _ in picked.values()], [label for _, label in picked.values()]
        results = (
            occlusion.occlusion_sensitivities(vis.net, torch.stack(images), labels, size=size, stride=stride)
            if images
            else []
        )
        rows, pngs = [], []
        for n, (image_id, x, result) in enumerate(zip(picked, images, results)):
            rows += [{"image_id": image_id, **r} for r in result.rows()]
            pngs.append(str(render.render_fig5(vis.rgb(x), result, out / f"fig5_{n}.png", vis.classes,
                                                    receptive_field(vis.net, "conv5"))))
        write_table(pa.Table.from_pylist(rows), out / "fig5")
        return {"pngs": pngs, "images": list(picked), "size": size, "stride": stride}

    record = _vis_stage(context, settings, "fig5", config, [model, val], build)
    context.add_output_metadata(
        {**record_md(record), **{f"fig5_{i}": image_md(p, 1200) for i, p in enumerate(record["pngs"])}}
    )
    return record


class Fig4Config(dg.Config):
    images: int = 5
    transforms: list[str] = list(invariance.TRANSFORMS)


@dg.asset(group_name="visualization", kinds={"pytorch", "png", "parquet"}, code_version=VIS_CODE, ins=UPSTREAM)
def fig4(
    context: dg.AssetExecutionContext, config: Fig4Config, settings: ZFSettings, model: dict, val: dict, mean: dict
) -> dict:
    """Fig. 4: vertical translation, scale and rotation of sample images; Euclidean distance between the
    transformed and original feature vectors at layers 1 and 7, and the true-class probability."""

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        picked = one_per_class(vis, config.images)
        images = torch.stack([x for x, _ in picked.values()])
        labels = [y for _, y in picked.values()]
        # The paper's translations are in pixels of a 224 input: scale them to this input.
        amounts = {k: v for k, v in invariance.PAPER_AMOUNTS.items()}
        amounts["translation"] = tuple(round(t * vis.crop / 224) for t in amounts["translation"])
        results = [invariance.invariance_sweep(vis.net, images, labels, kind, amounts[kind], image_ids=list(picked))
                   for kind in config.transforms]
        write_table(pa.Table.from_pylist([r for res in results for r in res.rows()]), out / "fig4")
        return {"png": str(render.render_fig4(results, out / "fig4.png")), "images": list(picked)}

    record = _vis_stage(context, settings, "fig4", config, [model, val], build)
    context.add_output_metadata({**record_md(record), "fig4": image_md(record["png"], 1200)})
    return record


class Table3Config(dg.Config):
    parts: str = ""  # a parts config (docs/deconvnet.md); default: the demo's, or docs/table3_parts_imagenette.json


@dg.asset(group_name="visualization", kinds={"pytorch", "parquet"}, code_version=VIS_CODE, ins=UPSTREAM)
def table3(context: dg.AssetExecutionContext, config: Table3Config, settings: ZFSettings, source_images: dict,
           model: dict, val: dict, mean: dict) -> dict:
    """Table 3: mask the same part (eyes, nose) in several images and measure how consistently the sign
    of the feature change agrees across images at layers 5 and 7 (mean normalized Hamming distance over
    image pairs, lower = tighter correspondence), against masks at random positions."""
    parts_file = (
        config.parts
        or source_images["roots"].get("correspondence")
        or str(Path(__file__).parents[1] / "docs" / "table3_parts_imagenette.json")
    )

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        parts = correspondence.load_parts_config(parts_file)
        images, sizes = part_images(vis, parts)
        parts = correspondence.in_input_pixels(parts, sizes, resize=vis.split.size, crop=vis.crop)
        rows = correspondence.correspondence(
            vis.net, images, parts, [layer for layer in ("conv5", "fc7") if layer in vis.net.layers]
        )
        table = pa.Table.from_pylist(rows)
        write_table(table, out / "table3")
        return {"png": str(render.render_table3(rows, out / "table3.png")), "rows": rows, "parts_file": parts_file}

    record = _vis_stage(context, settings, "table3", config, [model, val], build)
    md = "| part | layer | mean | std |\n|---|---|---|---|\n" + "".join(
        f"| {r['part']} | {r['layer']} | {r['mean']:.3f} | {r['std']:.3f} |\n" for r in record["rows"])
    context.add_output_metadata(
        {**record_md(record), "table": dg.MetadataValue.md(md), "plot": image_md(record["png"])}
    )
    return record


class AtlasConfig(dg.Config):
    maps: int = 0  # feature maps per layer in the atlas (0: all)
    norm: str = deconv.DEFAULT_NORM


@dg.asset(
    group_name="visualization",
    kinds={"html", "pytorch"},
    code_version=code_version(atlas_site, render, deconv),
    ins={
        **UPSTREAM,
        "fig8": dg.AssetIn("fig8"),
        "fig3": dg.AssetIn("fig3"),
        "fig4": dg.AssetIn("fig4"),
        "fig5": dg.AssetIn("fig5"),
        "table3": dg.AssetIn("table3"),
        "table7": dg.AssetIn("table7"),
    },
)
def atlas(
    context: dg.AssetExecutionContext,
    config: AtlasConfig,
    settings: ZFSettings,
    top9: dict,
    model: dict,
    val: dict,
    mean: dict,
    fig8: dict,
    fig3: dict,
    fig4: dict,
    fig5: dict,
    table3: dict,
    table7: dict,
) -> dict:
    """A static HTML atlas of the trained network (opens from disk, no server): per layer every feature
    map's top-9 deconvnet projections and image patches (section 4, Fig. 8), its evolution over training
    (Fig. 3), the occlusion and invariance figures (Figs. 4, 5), Table 3 and the transfer tables."""

    def build(out: Path) -> dict:
        vis = val_images(settings, model, val, mean)
        rows = pq.read_table(top9["file"])
        conv = [layer for layer in CONV_LAYERS if layer in vis.net.layers]
        shown = render.shown_rows(rows, conv, config.maps or None)
        images = vis.lookup({r["image_id"] for r in shown})
        extras = atlas_site.AtlasExtras(
            layer_figures={layer: {"Fig. 8: top-9 projections of sampled maps": fig8["pngs"][layer],
                                   "Fig. 3: evolution over training": fig3["pngs"][layer]}
                           for layer in fig3["pngs"] if layer in fig8["pngs"]},
            figures={**{f"Fig. 5: occlusion, image {i + 1}": png for i, png in enumerate(fig5["pngs"])},
                     "Fig. 4: invariance": fig4["png"], "Table 3: correspondence": table3["png"]},
            tables={"Table 7": table7["markdown"]},
        )
        index = atlas_site.build_atlas(out / "site", vis.net, rows, images, mean=vis.display_mean,
                                       maps=config.maps or None, extras=extras, norm=config.norm)
        return {"index": str(index)}

    upstream = [top9, model, fig8, fig3, fig4, fig5, table3, table7]
    record = cached_stage(settings.out, "atlas", [code_version(atlas_site, render, deconv), config.model_dump(),
                                                  *[u["fingerprint"] for u in upstream]], build, context.log.info)
    context.add_output_metadata({**record_md(record), "index": dg.MetadataValue.url(f"file://{record['index']}")})
    # The run's last lines: where to look.
    context.log.info(f"atlas: open {record['index']} in a browser")
    context.log.info(f"Table 7: {Path(table7['path']).with_suffix('')}.{{csv,parquet,md,png}}")
    return record


def pngs_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """Every PNG the figure asset lists exists and decodes."""

    @dg.asset_check(asset=asset, name="pngs_readable")
    def _check(settings: ZFSettings) -> dg.AssetCheckResult:
        record = settings.record(asset.key.to_user_string())
        listed = record.get("pngs") or ([record["png"]] if "png" in record else [])
        paths = list(listed.values()) if isinstance(listed, dict) else list(listed)
        bad = []
        for path in paths:
            try:
                with Image.open(path) as im:
                    im.verify()
            except (OSError, SyntaxError) as error:
                bad.append(f"{path}: {error}")
        return dg.AssetCheckResult(
            passed=bool(paths) and not bad, metadata={"pngs": len(paths), "unreadable": dg.MetadataValue.json(bad)}
        )

    return _check


visualization_assets = [
    fig8,
    fig3,
    fig5,
    fig4,
    table3,
    atlas,
    *[pngs_check(a) for a in (fig8, fig3, fig5, fig4, table3)],
]
