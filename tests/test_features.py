"""Layer-wise extraction to Parquet: positions, batching, top-9 over the tables, the vector column, atomicity, views."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from torch._dynamo.utils import counters as dynamo_counters

from zf_pipeline import features
from zf_pipeline.features import RING_SLOTS, SUMMARY_FILE, ExtractionSummary, WriterOptions, Writers, extract
from zf_pipeline.features.writers import HostRing
from zf_pipeline.mining import mine_top9
from zf_pipeline.models.zfnet import build, kaiming_init, variant
from zf_pipeline.query import connect, write_views

SIZE = 64


def small_model(**overrides):
    return build(variant("krizhevsky", width=0.0625, num_classes=5, input_size=SIZE, **overrides), seed=0)


def batches_of(images: torch.Tensor, ids: list[str], batch: int):
    labels = torch.arange(len(ids)) % 5
    return [(images[i : i + batch], labels[i : i + batch], ids[i : i + batch]) for i in range(0, len(ids), batch)]


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def read(root: Path, table: str) -> list[dict]:
    """All rows of a table, partition by partition (vector lengths differ across layers), in a fixed order."""
    rows = []
    for part in sorted((root / table).glob("layer=*")):
        layer = part.name.removeprefix("layer=")
        rows += [dict(r, layer=layer) for r in ds.dataset(part, format="parquet").to_table().to_pylist()]
    return sorted(rows, key=lambda r: (r["layer"], r["image_id"], r.get("channel", 0)))


def test_argmax_positions_on_a_hand_built_conv1(tmp_path: Path) -> None:
    """conv1 map 0 copies the red channel through its kernel's centre tap; map 1 is all negative."""
    model = small_model()
    conv1 = model.conv1
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.bias.zero_()
        centre = conv1.kernel_size[0] // 2
        conv1.weight[0, 0, centre, centre] = 1.0
        conv1.weight[1] = -1.0
    stride, pad = conv1.stride[0], conv1.padding[0]
    spots = [(3, 7), (11, 2), (0, 13)]  # (y, x) in conv1's map
    images = torch.zeros(len(spots), 3, SIZE, SIZE)
    for i, (y, x) in enumerate(spots):
        images[i, 0, y * stride - pad + centre, x * stride - pad + centre] = 2.5 + i
        images[i, 0, 40, 1] = 0.5  # a weaker spot elsewhere
    out = tmp_path / "x"
    extract(model, batches_of(images, ["a", "b", "c"], 3), out, split="val", layers=("conv1",))
    rows = {(r["image_id"], r["channel"]): r for r in read(out, "activations")}
    for i, (image, (y, x)) in enumerate(zip("abc", spots)):
        assert (rows[image, 0]["y"], rows[image, 0]["x"], rows[image, 0]["value"]) == (y, x, 2.5 + i)
        assert (rows[image, 1]["y"], rows[image, 1]["x"], rows[image, 1]["value"]) == (0, 0, 0.0)  # all zero after relu


def test_many_batches_match_one_batch(tmp_path: Path) -> None:
    model = small_model()
    images, ids = random_images(23), [f"n{i % 4}/img_{i:03d}" for i in range(23)]
    one = extract(model, batches_of(images, ids, 23), tmp_path / "one", split="train")
    small = WriterOptions(row_group_rows=30, row_groups_per_file=3)
    many = extract(model, batches_of(images, ids, 5), tmp_path / "many", split="train", writing=small)
    assert one.images == many.images == 23 and one.activation_rows == many.activation_rows
    for table in ("activations", "features"):
        a, b = read(tmp_path / "one", table), read(tmp_path / "many", table)
        assert a == b
    # Small row groups really split the layers into several row groups and files.
    parts = sorted((tmp_path / "many" / "activations" / "layer=conv1").glob("*.parquet"))
    assert len(parts) > 1 and pq.ParquetFile(parts[0]).metadata.num_row_groups == 3


def test_rows_cover_every_image_layer_and_channel(tmp_path: Path) -> None:
    model = small_model()
    summary = extract(model, batches_of(random_images(7), [f"i{i}" for i in range(7)], 4), tmp_path / "x", split="val")
    assert summary == ExtractionSummary.load(tmp_path / "x")
    con = connect(tmp_path / "x")
    counts = dict(con.sql("SELECT layer, count(*) FROM activations GROUP BY layer").fetchall())
    assert counts == {name: 7 * info.channels for name, info in summary.layers.items()}
    fc = con.execute("SELECT max(y), max(x), count(DISTINCT channel) FROM activations WHERE layer = 'fc6'").fetchall()[
        0
    ]
    assert fc == (0, 0, summary.layers["fc6"].channels)  # an fc unit is a 1x1 map


TOP9_BY_SORT = """
SELECT layer, channel, rank, image_id, label, value, y, x FROM (
    SELECT *, row_number() OVER (PARTITION BY layer, channel ORDER BY value DESC, image_id) AS rank
    FROM read_parquet(?, hive_partitioning = true)
) WHERE rank <= 9 ORDER BY layer, channel, rank
"""


def top9_by_sort(extraction: Path) -> list[tuple]:
    """The oracle: every map's rows sorted whole by (value descending, image_id), the first 9 kept."""
    rows = duckdb.execute(TOP9_BY_SORT, [str(extraction / "activations" / "layer=*" / "*.parquet")]).fetchall()
    return [
        (layer, channel, rank, image_id, label, float(value), y, x)
        for layer, channel, rank, image_id, label, value, y, x in rows
    ]


@pytest.mark.parametrize("batch", [4, 30])
def test_top9_of_an_extraction_equals_a_whole_sort_with_ties(tmp_path: Path, batch: int) -> None:
    model = small_model()
    base = random_images(10, seed=3)
    images = torch.cat([base, base, base[:4]])  # duplicated pixels: every map ties across copies
    # ids against stream order, 7 to 13 bytes long
    ids = [f"copy{i // 10}-{'x' * (i % 7)}{i % 10}" for i in range(len(images))][::-1]
    out = tmp_path / "x"
    extract(model, batches_of(images, ids, batch), out, split="val")
    mine_top9(out / "activations", out / "top9.parquet")
    mined = [(r["layer"], r["channel"], r["rank"], r["image_id"], r["label"], float(r["value"]), r["y"], r["x"])
             for r in pq.read_table(out / "top9.parquet").to_pylist()]
    assert mined == top9_by_sort(out)
    tied = [r for r in mined if r[2] == 2 and r[0] == "conv1"]
    first = {(r[0], r[1]): r[5] for r in mined if r[2] == 1}
    assert any(first[r[0], r[1]] == r[5] for r in tied)  # the copies do tie: rank 2 holds rank 1's value


def test_fewer_images_than_k(tmp_path: Path) -> None:
    out = tmp_path / "x"
    summary = extract(small_model(), batches_of(random_images(4), list("dcba"), 3), out, split="val", layers=("conv5",))
    rows = mine_top9(out / "activations", out / "top9.parquet")
    assert set(pq.read_table(out / "top9.parquet").column("rank").to_pylist()) == {1, 2, 3, 4}
    assert rows == 4 * summary.layers["conv5"].channels


def test_vector_is_a_fixed_size_array_in_duckdb(tmp_path: Path) -> None:
    model = small_model()
    summary = extract(model, batches_of(random_images(6), [f"i{i}" for i in range(6)], 6), tmp_path / "x", split="test")
    schema = pq.read_schema(next((tmp_path / "x" / "features" / "layer=conv5").glob("*.parquet")))
    assert schema.field("vector").type == pa.list_(pa.float16(), summary.layers["conv5"].vector_length)
    # conv5 is the pool5 output, i.e. exactly what fc6 reads.
    images = random_images(6)
    with torch.no_grad():
        x = images
        for name, module in model.named_children():
            x = module(x)
            if name == "pool5":
                break
    con = connect(tmp_path / "x")
    for layer, info in summary.layers.items():
        kind, length = con.execute(
            f"SELECT typeof(vector), array_length(vector) FROM features_{layer} LIMIT 1"
        ).fetchall()[0]
        assert kind == f"FLOAT[{info.vector_length}]" and length == info.vector_length
    got = np.array(con.sql("SELECT vector FROM features_conv5 ORDER BY image_id").fetchnumpy()["vector"].tolist())
    np.testing.assert_allclose(got, x.flatten(1).numpy(), rtol=1e-3, atol=1e-6)
    assert con.sql("SELECT DISTINCT split FROM features").fetchall() == [("test",)]


def test_conv_features_are_pooled_to_the_documented_grid(tmp_path: Path) -> None:
    summary = extract(
        small_model(), batches_of(random_images(2), ["a", "b"], 2), tmp_path / "x", split="val", layers=("conv1", "fc7")
    )
    assert summary.layers["conv1"].vector_length == summary.layers["conv1"].channels * 6 * 6
    assert summary.layers["fc7"].vector_length == summary.layers["fc7"].channels


def test_features_only_pass(tmp_path: Path) -> None:
    summary = extract(
        small_model(),
        batches_of(random_images(3), list("abc"), 2),
        tmp_path / "x",
        split="val",
        layers=("fc7",),
        activation_layers=(),
    )
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [SUMMARY_FILE, "features"]
    assert summary.activation_rows == 0 and summary.layers["fc7"].vector_length == summary.layers["fc7"].channels


def test_nothing_is_visible_when_the_pass_fails(tmp_path: Path) -> None:
    def failing():
        yield from batches_of(random_images(8), [f"i{i}" for i in range(8)], 4)
        raise OSError("shard 3 unreadable")

    with pytest.raises(OSError, match="shard 3"):
        extract(small_model(), failing(), tmp_path / "x", split="val", writing=WriterOptions(row_group_rows=10))
    assert list(tmp_path.iterdir()) == []


def test_bad_batches_are_rejected(tmp_path: Path) -> None:
    images = random_images(4)
    with pytest.raises(ValueError, match="duplicate image_id"):
        extract(small_model(), batches_of(images, ["a", "b", "a", "c"], 2), tmp_path / "x", split="val")
    with pytest.raises(ValueError, match="labels"):
        extract(small_model(), [(images, torch.zeros(3), list("abcd"))], tmp_path / "x", split="val")
    loud = small_model()
    with torch.no_grad():
        loud.conv1.weight.fill_(1e4)  # maxima beyond float16's 65504
    with pytest.raises(ValueError, match="non-finite"):
        extract(loud, batches_of(images.abs(), list("abcd"), 2), tmp_path / "x", split="val", layers=("conv1",))
    with pytest.raises(ValueError, match="no batches"):
        extract(small_model(), [], tmp_path / "x", split="val")
    with pytest.raises(KeyError, match="fc7"):
        extract(small_model(removed=("fc7",)), batches_of(images, list("abcd"), 2), tmp_path / "x", split="val")
    assert not (tmp_path / "x").exists()


def test_ablation_variant_without_layers_3_4(tmp_path: Path) -> None:
    model = small_model(removed=("conv3", "conv4"))
    summary = extract(
        model,
        batches_of(random_images(3), list("abc"), 2),
        tmp_path / "x",
        split="val",
        layers=("conv2", "conv5", "fc6"),
    )
    assert sorted(p.name for p in (tmp_path / "x" / "activations").iterdir()) == [
        "layer=conv2",
        "layer=conv5",
        "layer=fc6",
    ]
    assert summary.layers["conv5"].channels == model.conv5.out_channels


def test_loop_runs_ahead_of_the_writers_until_the_slots_are_used(tmp_path: Path, monkeypatch) -> None:
    """The loop never waits for a batch's outputs: with the writers stalled it goes on until every host
    slot holds a batch; the writers are fed off the loop's thread; nothing is lost once they resume."""
    model = small_model()
    images, ids = random_images(20), [f"i{i:02d}" for i in range(20)]
    extract(model, batches_of(images, ids, 2), tmp_path / "plain", split="val")
    gate, stalled_once, blocked, pulled, threads = threading.Event(), threading.Event(), threading.Event(), [], set()
    acquire = HostRing.acquire

    class Stalled(Writers):
        def dispatch(self, *args) -> None:
            threads.add(threading.current_thread())
            stalled_once.set()
            gate.wait()
            super().dispatch(*args)

    def acquire_or_block(self):
        # The copier frees a slot before its dispatch, so once it stalls no slot comes back: the loop waits for good.
        if stalled_once.is_set() and self.free.empty():
            blocked.set()
        return acquire(self)

    def counted():
        for batch in batches_of(images, ids, 2):
            pulled.append(batch)
            yield batch

    monkeypatch.setattr(HostRing, "acquire", acquire_or_block)
    run = threading.Thread(
        target=extract, args=(model, counted(), tmp_path / "ring"), kwargs={"split": "val", "writers": Stalled}
    )
    run.start()
    # Batch 1 is copied out of its slot before its dispatch stalls, so RING_SLOTS more batches fit; the
    # next one is pulled and waits for a slot.
    expected = RING_SLOTS + 2
    assert blocked.wait(60), "the loop never waited for a slot"
    assert len(pulled) == expected
    gate.set()
    run.join(60)
    assert not run.is_alive() and threading.main_thread() not in threads and threads
    for table in ("activations", "features"):
        assert read(tmp_path / "plain", table) == read(tmp_path / "ring", table)


def test_a_writer_error_stops_the_pass_without_hanging(tmp_path: Path, monkeypatch) -> None:
    """More batches than the slots and the writer queues hold: a failing writer must not leave the loop
    waiting for a slot or a queue forever."""
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")

    monkeypatch.setattr(features.PartitionWriter, "append", failing)
    images, ids = random_images(60), [f"i{i:02d}" for i in range(60)]
    with pytest.raises(RuntimeError, match="disk full"):
        extract(small_model(), batches_of(images, ids, 1), tmp_path / "x", split="val", layers=("conv1",))
    assert not (tmp_path / "x").exists()


def test_query_views_and_views_sql(tmp_path: Path) -> None:
    root = tmp_path / "x"
    extract(small_model(), batches_of(random_images(5), list("abcde"), 5), root, split="val", layers=("conv1", "fc6"))
    mine_top9(root / "activations", root / "top9.parquet")
    con = connect(root)
    assert con.execute("SELECT count(*) FROM top9 WHERE layer = 'conv1' AND rank = 1").fetchall()[0][0] == con.sql(
        "SELECT count(DISTINCT channel) FROM activations WHERE layer = 'conv1'"
    ).fetchall()[0][0]
    best = con.sql(
        "SELECT t.value = a.value FROM top9 t JOIN activations a USING (layer, channel, image_id) "
        "WHERE rank = 1 LIMIT 1"
    ).fetchall()[0]
    assert best == (True,)
    views = write_views(root)
    assert (root / SUMMARY_FILE).exists() and views.name == "views.sql"
    # The CLI path: a fresh connection running views.sql from the data folder sees the same tables.
    cwd = os.getcwd()
    try:
        os.chdir(root)
        cli = duckdb.connect()
        cli.execute(views.read_text())
        assert cli.execute("SELECT count(*) FROM features_fc6").fetchall()[0] == (5,)
        assert (
            cli.execute("SELECT count(*) FROM activations").fetchall()[0]
            == con.execute("SELECT count(*) FROM activations").fetchall()[0]
        )
    finally:
        os.chdir(cwd)


def test_several_writer_threads_per_partition_match_one(tmp_path: Path) -> None:
    """With many cores each partition gets several writer threads, each with its own files: same rows.
    The threads take whole row groups in turn: row group g holds the next images of the stream and lies
    in file g mod threads; a partition whose images fit one row group is written by one thread."""
    model = small_model()
    images, ids = random_images(23), [f"img_{i:03d}" for i in range(23)]
    extract(model, batches_of(images, ids, 23), tmp_path / "one", split="train")
    many_cores = WriterOptions(row_group_rows=100, cores=64)
    summary = extract(model, batches_of(images, ids, 3), tmp_path / "threads", split="train", writing=many_cores)
    for table in ("activations", "features"):
        assert read(tmp_path / "one", table) == read(tmp_path / "threads", table)
    several = 0
    for name, info in summary.layers.items():
        per_group = max(1, 100 // info.channels)
        files = sorted((tmp_path / "threads" / "activations" / f"layer={name}").glob("*.parquet"))
        assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
        groups = {}  # first image -> (file, images)
        for i, f in enumerate(files):
            parquet = pq.ParquetFile(f)
            for g in range(parquet.num_row_groups):
                group = list(dict.fromkeys(parquet.read_row_group(g, columns=["image_id"]).column(0).to_pylist()))
                groups[ids.index(group[0])] = (i, group)
        assert sorted(groups) == list(range(0, 23, per_group))
        for g, first in enumerate(sorted(groups)):
            file, group = groups[first]
            assert group == ids[first : first + per_group] and file == g % len(files)
        several += len(files) > 1
    assert several >= 2  # the check above did see threads in turn
    assert [p.name for p in (tmp_path / "threads" / "features" / "layer=conv3").glob("*.parquet")] == [
        "part-00000.parquet"
    ]


def test_channels_last_gives_the_same_maxima_and_positions(tmp_path: Path) -> None:
    """The argmax over channels_last memory reads [N, H*W, C]: positions must still be y * width + x."""
    model = small_model()
    images, ids = random_images(6, seed=5), [f"i{i}" for i in range(6)]
    extract(model, batches_of(images, ids, 6), tmp_path / "plain", split="val")
    last = small_model().to(memory_format=torch.channels_last)
    extract(
        last, batches_of(images.contiguous(memory_format=torch.channels_last), ids, 6), tmp_path / "last", split="val"
    )
    plain, other = read(tmp_path / "plain", "activations"), read(tmp_path / "last", "activations")
    assert [(a["image_id"], a["layer"], a["channel"]) for a in plain] == [
        (b["image_id"], b["layer"], b["channel"]) for b in other
    ]
    # The other layout's convolutions may round differently: a float16 value one step off, a near-tie gone the
    # other way.
    np.testing.assert_allclose([a["value"] for a in plain], [b["value"] for b in other], rtol=2**-10, atol=1e-6)
    moved = sum((a["y"], a["x"]) != (b["y"], b["x"]) for a, b in zip(plain, other))
    assert moved <= max(1, len(plain) // 200), f"{moved} of {len(plain)} maxima at other positions"
    for a, b in zip(read(tmp_path / "plain", "features"), read(tmp_path / "last", "features")):
        np.testing.assert_allclose(a["vector"], b["vector"], rtol=2**-10, atol=1e-6)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.slow
@pytest.mark.parametrize("device, arch, width, size, unique, batch", [
    ("cpu", "krizhevsky", 0.0625, SIZE, 6, 5),
    pytest.param("cuda", "krizhevsky", 0.0625, SIZE, 6, 5, marks=CUDA),
    # The demo's net and batch size. (With the forward and the maxima in one compiled graph, the demo's
    # *trained* net got wrong maxima on an H100, but this random one did not: extract's first-batch check
    # against eager is what guards against such a compiler bug.)
    pytest.param("cuda", "ours", 0.25, 96, 128, 256, marks=CUDA),
])
def test_compiled_pass_equals_eager(
    tmp_path: Path, device: str, arch: str, width: float, size: int, unique: int, batch: int
) -> None:
    """compile=True compiles the forward, then the maxima and the packing: rows equal the eager pass's up to
    float rounding. A second pass, with another model object, reuses the graphs; one with labels on the
    device gives the same rows."""

    def model() -> torch.nn.Module:
        net = build(variant(arch, width=width, num_classes=5, input_size=size), seed=0)
        kaiming_init(net)  # activations of random inputs stay O(1), as in a trained net
        return net

    base = torch.randn(unique, 3, size, size, generator=torch.Generator().manual_seed(7))
    images, ids = torch.cat([base, base]), [f"i{i:03d}" for i in range(2 * unique)]  # copies: every map ties
    kwargs = dict(split="val", layers=("conv2", "conv5", "fc7"), device=device)
    extract(model(), batches_of(images, ids, batch), tmp_path / "eager", **kwargs)
    extract(model(), batches_of(images, ids, batch), tmp_path / "compiled", compile=True, **kwargs)
    graphs = dynamo_counters["stats"]["unique_graphs"]
    extract(model(), batches_of(images, ids, batch), tmp_path / "again", compile=True, **kwargs)
    assert dynamo_counters["stats"]["unique_graphs"] == graphs, "the second compiled pass compiled again"
    # Labels already on the device (as the nvJPEG loader gives them) take the other upload path.
    on_device = [(x, y.to(device), i) for x, y, i in batches_of(images, ids, batch)]
    extract(model(), on_device, tmp_path / "on_device", compile=True, **kwargs)
    for run in ("again", "on_device"):
        assert read(tmp_path / run, "activations") == read(tmp_path / "compiled", "activations"), run
    eager, compiled = read(tmp_path / "eager", "activations"), read(tmp_path / "compiled", "activations")
    assert [(a["image_id"], a["layer"], a["channel"]) for a in eager] == [
        (b["image_id"], b["layer"], b["channel"]) for b in compiled
    ]
    # Other kernels round differently (on CUDA, cuDNN's TF32 convolutions, PyTorch's default): up to ~1e-3 of
    # the values' scale. The one-graph bug was off by 0.4-1.1 of it.
    value = np.array([[a["value"], b["value"]] for a, b in zip(eager, compiled)], np.float32)
    scale, worst = np.abs(value).max(), np.abs(value[:, 0] - value[:, 1]).max()
    assert worst <= 5e-3 * scale, f"compiled maxima off by up to {worst:.3g} (largest maximum {scale:.3g})"
    # Such rounding may also break a near-tie the other way and find a map's maximum elsewhere: rare.
    moved = sum((a["y"], a["x"]) != (b["y"], b["x"]) for a, b in zip(eager, compiled))
    assert moved <= max(1, len(eager) // 200), f"{moved} of {len(eager)} maxima at other positions"
    vectors = [
        np.array([a["vector"], b["vector"]], np.float32)
        for a, b in zip(read(tmp_path / "eager", "features"), read(tmp_path / "compiled", "features"))
    ]
    assert max(np.abs(v[0] - v[1]).max() for v in vectors) <= 5e-3 * max(np.abs(v).max() for v in vectors)


def test_a_compiled_pass_that_disagrees_with_eager_on_its_first_batch_runs_eager(tmp_path: Path, caplog) -> None:
    """A compiler bug (one was seen on an H100) must not write wrong maxima: the first compiled batch of each
    shape (each has its own graphs) is checked against the eager pass, and on a disagreement the pass warns
    and runs eager. Graphs that agree run on."""
    images, ids = random_images(12, seed=7), [f"i{i:02d}" for i in range(12)]
    kwargs = dict(split="val", layers=("conv2", "fc7"))
    extract(small_model(), batches_of(images, ids, 5), tmp_path / "eager", **kwargs)  # batches of 5, 5 and 2
    for name, wrong_batch in (("agrees", 0), ("wrong", 5), ("wrong_last", 2)):

        def compiler(
            fn, wrong_batch=wrong_batch
        ):  # stands in for torch.compile: the forward's conv2 x3 in batches of that size
            def run(*args):
                out = fn(*args)
                if not isinstance(out, dict):  # not the forward's activations
                    return out
                return {k: v * 3 if k == "conv2" and len(v) == wrong_batch else v for k, v in out.items()}

            return run

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zf_pipeline.features"):
            extract(small_model(), batches_of(images, ids, 5), tmp_path / name, compile=compiler, **kwargs)
        assert ("runs eager" in caplog.text) == (name != "agrees"), caplog.text
        for table in ("activations", "features"):
            assert read(tmp_path / name, table) == read(tmp_path / "eager", table), (name, table)


def test_row_groups_split_buffered_batches_without_losing_order(tmp_path: Path) -> None:
    """Batches straddling row groups are split: every group holds exactly the next images, in order,
    and chunked columns give the same table as the concatenated arrays."""
    rng = np.random.default_rng(0)
    sizes, channels = [2, 4, 1, 5], 3
    value = rng.random((sum(sizes), channels)).astype(np.float16)
    y, x = (rng.integers(0, 13, value.shape).astype(np.int16) for _ in range(2))
    ids, labels = [f"i{i:02d}" for i in range(len(value))], np.arange(len(value)) % 4
    writer = features.PartitionWriter(
        tmp_path,
        "conv9",
        channels,
        3 * channels,
        features.activation_table,
        features.ACTIVATION_SCHEMA,
        features.ACTIVATION_WRITE_OPTIONS,
    )
    start = 0
    for n in sizes:
        writer.append(
            ids[start : start + n],
            labels[start : start + n],
            value[start : start + n],
            y[start : start + n],
            x[start : start + n],
        )
        start += n
    writer.close()
    written = pq.ParquetFile(tmp_path / "layer=conv9" / "part-00000.parquet")
    assert [written.metadata.row_group(i).num_rows for i in range(written.num_row_groups)] == [9, 9, 9, 9]
    whole = features.activation_table(ids, labels, value, y, x)
    assert written.read().to_pylist() == whole.to_pylist()  # (each row group has its own image_id dictionary)
    chunked = features.activation_table(ids, labels, [value[:5], value[5:]], [y[:5], y[5:]], [x[:5], x[5:]])
    assert chunked.combine_chunks().equals(whole.combine_chunks()) and chunked.column("value").num_chunks == 2
