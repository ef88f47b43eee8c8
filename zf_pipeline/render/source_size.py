"""The source-size study (Table 7 as the source set grows): accuracy against layer per source, and fc7 transfer
accuracy against the number of source classes, each beside the paper's ImageNet-trained (1,000-class) numbers.

Both take the study as ``docs/results/source_size.json`` holds it: source name -> ``{"classes", "table7":
{"svm_conv1": ..., "softmax_fc7": ...}, "table4_30": {"pretrained": ..., "scratch": ...}, ...}`` (means, %).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from zf_pipeline.render.common import _save_figure
from zf_pipeline.tables import PAPER_TABLE7, TABLE7_LAYERS

PAPER_CLASSES = 1000  # ImageNet 2012, the paper's source
CALTECH101 = 0  # the paper's Caltech-101 column of Table 7


def _by_classes(study: Mapping[str, dict]) -> list[tuple[str, dict]]:
    return sorted(study.items(), key=lambda item: item[1]["classes"])


def _cells(cells: list[tuple[dict, str, str]]) -> tuple[list[float], list[float]]:
    """The (source, table, key) cells' means and their stds over the splits; nan and 0 where not measured yet."""
    means = [source[table].get(key) for source, table, key in cells]
    stds = [source.get(f"{table}_std", {}).get(key) or 0.0 for source, table, key in cells]
    return [float("nan") if mean is None else mean for mean in means], stds


def render_source_size_layers(study: Mapping[str, dict], path: str | os.PathLike) -> Path:
    """Caltech-101 (30/class) accuracy against layer, one panel per classifier (SVM, softmax), one line per source
    (by number of classes), the paper's line dashed; a PNG written atomically."""
    classifiers = list(dict.fromkeys(classifier for classifier, _ in PAPER_TABLE7))
    fig = Figure(figsize=(5 * len(classifiers), 4), dpi=120)
    axes = fig.subplots(ncols=len(classifiers), squeeze=False, sharey=True)[0]
    for ax, classifier in zip(axes, classifiers):
        layers = [layer for c, layer in PAPER_TABLE7 if c == classifier]
        x = [TABLE7_LAYERS.index(layer) for layer in layers]
        for i, (name, source) in enumerate(_by_classes(study)):
            y, std = _cells([(source, "table7", f"{classifier}_{layer}") for layer in layers])
            ax.errorbar(x, y, yerr=std, fmt="o-", color=f"C{i}", markersize=3, capsize=2,
                        label=f"{name} ({source['classes']} classes)")
        ax.plot(x, [PAPER_TABLE7[(classifier, layer)][CALTECH101][0] for layer in layers], "x--", color="black",
                label=f"paper (ImageNet, {PAPER_CLASSES} classes)")
        ax.set_xticks(range(len(TABLE7_LAYERS)), TABLE7_LAYERS)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
        ax.set_title(f"Caltech-101, 30 train/class: {'SVM' if classifier == 'svm' else 'softmax'}")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("mean per-class accuracy (%)")
    fig.tight_layout()
    return _save_figure(fig, path)


def render_source_size_classes(study: Mapping[str, dict], path: str | os.PathLike) -> Path:
    """fc7 transfer accuracy on Caltech-101 (30/class) against the number of source classes (log scale): SVM and
    softmax on fc7 per source, the paper's at 1,000 classes, and the network trained from scratch on the target
    (the same recipe and splits whatever the source); a PNG written atomically."""
    sources = _by_classes(study)
    classes = [source["classes"] for _, source in sources]
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for i, classifier in enumerate(dict.fromkeys(classifier for classifier, _ in PAPER_TABLE7)):
        y, std = _cells([(source, "table7", f"{classifier}_fc7") for _, source in sources])
        ax.errorbar(classes, y, yerr=std, fmt="o-", color=f"C{i}", capsize=2, label=f"ours, {classifier} on fc7")
        ax.plot([PAPER_CLASSES], [PAPER_TABLE7[(classifier, "fc7")][CALTECH101][0]], "x", color=f"C{i}",
                markersize=8, label=f"paper, {classifier} on fc7")
    y, std = _cells([(source, "table4_30", "scratch") for _, source in sources])
    ax.errorbar(classes, y, yerr=std, fmt="s:", color="grey", markersize=3, capsize=2,
                label="trained from scratch on the target (Table 4)")
    for (name, source), x in zip(sources, classes):
        ax.annotate(name, (x, 2), rotation=90, fontsize=7, ha="center", va="bottom", color="dimgrey")
    ax.set_xscale("log")
    ax.set_xlabel("source classes")
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Caltech-101 (30 train/class) on fc7 features")
    ax.legend(fontsize=7, loc="upper left")  # the sources' names stand along the bottom
    fig.tight_layout()
    return _save_figure(fig, path)
