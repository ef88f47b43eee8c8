"""Transfer evaluation (section 5): split protocol, metrics, probes (torch vs scikit-learn), VOC, tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from zf_pipeline.render import render_fig7, render_table7
from zf_pipeline.tables import PAPER_TABLE4, PAPER_TABLE7, TABLE7_N_TRAIN, fig7, publish, table4, table5, table6, table7
from zf_pipeline.transfer import (
    ProbeConfig,
    TooFewImagesError,
    average_precision,
    class_splits,
    evaluate_splits,
    evaluate_voc,
    fit_probe,
    load_features,
    mean_per_class_accuracy,
    mean_per_class_accuracy_from_predictions,
    protocol_splits,
    run_problems,
    run_row,
    split_problems,
    split_rows,
    voc_training_samples,
    write_table,
)
from zf_pipeline.transfer import probes as probes_module
from zf_pipeline.transfer import protocol as protocol_module
from zf_pipeline.transfer.probes import Probe, preprocess, sklearn_fit
from zf_pipeline.transfer.protocol import short_of_optimum


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny problems: thread hand-offs cost more than they save on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_features(n_per_class, dim=32, separation=0.6, seed=0, noise_seed=None):
    """Class means (from ``seed``) plus noise (from ``noise_seed``, default ``seed``), rectified like a ReLU
    layer's output. Returns X, y, image ids."""
    n_per_class = np.asarray(n_per_class)
    y = np.repeat(np.arange(n_per_class.size), n_per_class)
    means = np.random.default_rng(seed).normal(size=(n_per_class.size, dim))
    noise = np.random.default_rng([seed, 1] if noise_seed is None else [noise_seed, 2]).normal(size=(y.size, dim))
    X = np.maximum(separation * means[y] + noise, 0).astype(np.float32)
    image_ids = np.array([f"class{c:03d}/img{i:05d}" for i, c in enumerate(y)], dtype=object)
    return X, y, image_ids


# --- split protocol -------------------------------------------------------------------------------


def test_splits_counts_disjoint_and_seeded():
    counts = [31, 45, 80, 60]  # like the shared Caltech-101: 31 to 80 per class
    _, y, ids = make_features(counts)
    splits = class_splits(ids, y, 30, max_test=50, n_splits=5, seed=3)
    assert split_problems(splits) == []
    for k in range(5):
        part = splits.filter(pc.equal(splits["split_index"], k))
        for c, n in enumerate(counts):
            rows = part.filter(pc.equal(part["label"], c))
            roles = rows["role"].to_pylist()
            assert roles.count("train") == 30
            assert roles.count("test") == min(50, n - 30)  # up to 50, from the images not used for training
        train = set(part.filter(pc.equal(part["role"], "train"))["image_id"].to_pylist())
        test = set(part.filter(pc.equal(part["role"], "test"))["image_id"].to_pylist())
        assert not train & test
    # Same seed, same split, whatever the order of the images; another seed, another split.
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = class_splits(ids[order], y[order], 30, n_splits=5, seed=3)
    assert shuffled.sort_by("image_id").equals(splits.sort_by("image_id"))
    other = class_splits(ids, y, 30, n_splits=5, seed=4)
    assert set(other.filter(pc.equal(other["role"], "train"))["image_id"].to_pylist()) != set(
        splits.filter(pc.equal(splits["role"], "train"))["image_id"].to_pylist()
    )
    # The 5 splits differ from one another.
    trains = [frozenset(splits.filter(pc.and_(pc.equal(splits["split_index"], k), pc.equal(splits["role"], "train")))
                        ["image_id"].to_pylist()) for k in range(5)]
    assert len(set(trains)) == 5


def test_split_rows_map_ids_to_feature_rows():
    _, y, ids = make_features([20, 20])
    splits = class_splits(ids, y, 5, max_test=10, n_splits=2, seed=0)
    train, test = split_rows(splits, ids, 5, 1)
    assert len(train) == 10 and len(test) == 20
    one = splits.filter(pc.and_(pc.equal(splits["split_index"], 1), pc.equal(splits["role"], "train")))
    assert set(ids[train]) == set(one["image_id"].to_pylist())


def test_short_class_is_named_or_uses_what_is_there():
    _, y, ids = make_features([40, 20])
    with pytest.raises(TooFewImagesError, match=r"class few: 20 images"):
        class_splits(ids, y, 30, class_names=["many", "few"])
    splits = class_splits(ids, y, 30, short_classes="use_available", n_splits=1)
    few = splits.filter(pc.equal(splits["label"], 1))["role"].to_pylist()
    assert few.count("train") == 19 and few.count("test") == 1


def test_split_problems_catches_overlap_and_missing_class():
    _, y, ids = make_features([10, 10])
    splits = class_splits(ids, y, 5, n_splits=1)
    test_row = splits.filter(pc.equal(splits["role"], "test")).slice(0, 1)
    leaked = pa.concat_tables([splits, test_row.set_column(4, "role", pa.array(["train"]))])
    assert any("both train and test" in p for p in split_problems(leaked))
    no_test_for_1 = splits.filter(pc.or_(pc.equal(splits["label"], 0), pc.equal(splits["role"], "train")))
    assert any("classes [1] have no test image" in p for p in split_problems(no_test_for_1))


# --- metrics --------------------------------------------------------------------------------------


def test_mean_per_class_accuracy_on_a_hand_made_confusion():
    confusion = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])  # class 2 has no test image
    assert mean_per_class_accuracy(confusion) == pytest.approx((80.0 + 50.0) / 2)  # not 9/12 = 75
    y_true = np.array([0] * 10 + [1] * 2)
    y_pred = np.array([0] * 8 + [1] * 2 + [0, 1])
    assert mean_per_class_accuracy_from_predictions(y_true, y_pred, 3) == pytest.approx(65.0)
    with pytest.raises(ValueError, match="outside"):
        mean_per_class_accuracy_from_predictions(y_true, y_pred + 2, 3)


def test_voc_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([True, False, True, False, True])
    # Precision at the positives 1, 2/3, 3/5; the envelope keeps them (they fall): mean = (1 + 2/3 + 3/5) / 3.
    assert average_precision(scores, positive) == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3)
    # A later rise lifts earlier precision: positives at ranks 2, 3 -> precision 1/2 then 2/3 -> envelope 2/3, 2/3.
    assert average_precision(scores, np.array([False, True, True, False, False])) == pytest.approx(100 * 2 / 3)
    # Ignoring the top (difficult) image leaves positives at ranks 1, 2: AP 100.
    ignore = np.array([True, False, False, False, False])
    assert average_precision(scores, np.array([False, True, True, False, False]), ignore) == pytest.approx(100.0)


# --- probes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["softmax", "svm"])
def test_torch_probe_matches_sklearn(kind, dtype):
    X, y, _ = make_features([30] * 6, dim=32, separation=0.45, seed=1)
    Xt, yt, _ = make_features([50] * 6, dim=32, separation=0.45, seed=1, noise_seed=7)  # same means, new noise
    grid = (0.1, 1.0, 10.0)
    results = {}
    for backend in ("sklearn", "torch"):
        config = ProbeConfig(kind=kind, backend=backend, c_grid=grid, tol=1e-6, max_iter=3000, dtype=dtype)
        probe = fit_probe(X, y, config)
        assert probe.converged
        results[backend] = (probe, mean_per_class_accuracy_from_predictions(yt, probe.predict(Xt), 6))
    (ref, ref_acc), (ours, our_acc) = results["sklearn"], results["torch"]
    assert 30 < ref_acc < 100  # a problem where the classifier matters
    assert abs(our_acc - ref_acc) <= 0.5
    assert ours.c == ref.c
    for c in grid:
        assert abs(ours.cv_accuracy[c] - ref.cv_accuracy[c]) <= 1.0
    # Same objective, same optimum: the decision functions agree closely, not just the argmax.
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(Xt), atol=0.05 * np.abs(
        ref.decision_function(Xt)).max())


def probe_objective(probe, X, y, c):
    """The documented objective and its gradient, in float64 numpy (independent of the torch solver)."""
    Xp = probes_module.preprocess(X, probe.mean).astype(np.float64)
    W, b = probe.weight.astype(np.float64), probe.bias.astype(np.float64)
    n, targets = len(y), np.eye(W.shape[1])[y]
    logits = Xp @ W + b
    if probe.kind == "softmax":
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss, d_logits, penalized = -(targets * log_p).sum() / n, (np.exp(log_p) - targets) / n, (W,)
    else:
        signs = 2 * targets - 1
        margin = np.maximum(1 - signs * logits, 0)
        loss, d_logits, penalized = (margin**2).sum() / n, -2 * signs * margin / n, (W, b)
    value = loss + sum((p**2).sum() for p in penalized) / (2 * c * n)
    grad_w, grad_b = Xp.T @ d_logits + W / (c * n), d_logits.sum(axis=0) + (b / (c * n) if probe.kind == "svm" else 0)
    return value, max(np.abs(grad_w).max(), np.abs(grad_b).max())


@pytest.mark.parametrize("kind", ["svm", "softmax"])
def test_fewer_images_than_dimensions_fit_in_the_row_space_exactly(kind):
    """With D > N the reference fits on the training rows' span: the same classifier as on all D dimensions."""
    X, y, _ = make_features([12] * 3, dim=300, separation=0.8)
    config = ProbeConfig(kind=kind, backend="sklearn", c_grid=(10.0,), cv_folds=2, tol=1e-8, max_iter=5000)
    probe = fit_probe(X, y, config)
    Xp = preprocess(X, probe.mean)
    direct, converged = sklearn_fit(Xp, y, 10.0, config)
    assert converged and Xp.shape[0] < Xp.shape[1]
    np.testing.assert_allclose(probe.decision_function(X), direct.decision_function(Xp), rtol=1e-3, atol=1e-3)
    assert (probe.weight != 0).all()  # in the features' own coordinates, not the row space's



@pytest.mark.parametrize("kind", ["softmax", "svm"])
def test_preconditioned_solver_reaches_sklearn_optimum(kind):
    # D > rank of the preconditioner (rank 8 here): its top eigenpairs + mean of the rest are exercised.
    X, y, _ = make_features([25] * 5, dim=40, separation=0.5, seed=3)
    c, tol = 1000.0, 1e-7  # weak regularization: the ill-conditioned case
    config = ProbeConfig(kind=kind, c_grid=(c,), cv_folds=1, c_without_cv=c, tol=tol, max_iter=20000,
                         preconditioner_rank=8)
    fitted = {backend: fit_probe(X, y, replace(config, backend=backend)) for backend in ("sklearn", "torch")}
    assert fitted["torch"].c == c
    (ref_value, _), (value, grad_max) = (probe_objective(fitted[b], X, y, c) for b in ("sklearn", "torch"))
    assert grad_max <= 50 * tol  # KKT: stationary (float32 weights round the solution a little)
    assert value <= ref_value + 1e-6 and value == pytest.approx(ref_value, rel=1e-5)


def test_low_rank_spectrum_matches_eigh():
    rng = np.random.default_rng(5)  # 6 strong directions above an isotropic bulk, like features' spectra
    X = torch.as_tensor(rng.normal(size=(200, 6)) * [8, 7, 6, 5, 4, 3] @ rng.normal(size=(6, 24))
                        + rng.normal(size=(200, 24)))
    basis, eigenvalues, bulk = probes_module._top_spectrum(X, rank=6)
    exact = torch.linalg.eigvalsh(X.T @ X / len(X))
    torch.testing.assert_close(eigenvalues, exact[-6:], rtol=1e-3, atol=1e-8)
    assert bulk.item() == pytest.approx(exact[:-6].mean().item(), rel=1e-3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=torch.float64))


def test_solver_waits_for_the_device_once_per_evaluation(monkeypatch):
    # On a GPU every .tolist()/.item() waits for all queued work. The solver reads its acceptance and
    # convergence flags in one copy per evaluation (the unit step, or a backtracking round), plus once at the
    # start and once for the results.
    X, y, _ = make_features([30] * 5, dim=24, separation=0.5, seed=2)
    counts = {"read": 0, "evaluations": 0}

    def counted(real, key):
        def call(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(torch.Tensor, "tolist", counted(torch.Tensor.tolist, "read"))
    monkeypatch.setattr(torch.Tensor, "item", counted(torch.Tensor.item, "read"))
    objective = probes_module._SweepObjective
    monkeypatch.setattr(objective, "value_and_grad", counted(objective.value_and_grad, "evaluations"))
    probe = fit_probe(X, y, ProbeConfig(backend="torch", c_grid=(0.1, 10.0, 1000.0), cv_folds=2))
    assert probe.converged and counts["evaluations"] > 20  # C = 1000 takes many iterations
    assert counts["read"] <= counts["evaluations"] + 1


def test_probe_records_non_convergence():
    X, y, _ = make_features([20] * 4, dim=16)
    probe = fit_probe(X, y, ProbeConfig(backend="torch", c_grid=(1000.0,), max_iter=2, tol=1e-10))
    assert not probe.converged and probe.n_iter == 2


def test_c_at_the_edge_of_the_grid_is_warned_about_while_accuracy_still_rises(caplog):
    X, y, ids = make_features([40] * 4, dim=16, separation=0.8)
    splits = class_splits(ids, y, 20, max_test=10, n_splits=2)
    with caplog.at_level("WARNING", logger=protocol_module.log.name):
        runs = evaluate_splits(X, y, ids, splits, ProbeConfig(c_grid=(0.01, 1.0)), layer="fc7")
    assert runs["c"].to_pylist() == [1.0, 1.0]  # C = 0.01 is far too strong: worse on every fold of both splits
    assert ("C at the edge of the grid [0.01, 1.0], its cross-validated accuracy rising on every fold, "
            "on 2 of 2 splits (C=[1.0])") in caplog.text
    for grid in ((1.0,), (0.1, 10.0)):  # a single C is a choice, not a search; 0.1 and 10 are within noise
        caplog.clear()
        with caplog.at_level("WARNING", logger=protocol_module.log.name):
            evaluate_splits(X, y, ids, splits, ProbeConfig(c_grid=grid), layer="fc7")
        assert "edge of the grid" not in caplog.text


def test_an_edge_c_counts_as_short_of_the_optimum_only_when_it_gains_on_every_fold_beyond_the_margin():
    def probe(c: float, folds: dict[float, list[float]]) -> Probe:
        cv = {k: float(np.mean(v)) for k, v in folds.items()}
        return Probe("svm", np.arange(2), np.zeros(1), np.zeros((1, 2)), np.zeros(2), c, cv, folds)

    grid = (1.0, 10.0, 100.0)
    assert short_of_optimum(probe(100.0, {1.0: [80, 80], 10.0: [90, 89], 100.0: [92, 91]}), grid)
    assert short_of_optimum(probe(1.0, {1.0: [92, 93], 10.0: [90, 90], 100.0: [80, 80]}), grid)
    assert not short_of_optimum(probe(100.0, {1.0: [80, 80], 10.0: [90, 90], 100.0: [91, 90.5]}), grid)  # plateau
    assert not short_of_optimum(probe(100.0, {1.0: [80, 80], 10.0: [90, 90], 100.0: [96, 89]}), grid)  # one fold
    assert not short_of_optimum(probe(10.0, {1.0: [80, 80], 10.0: [95, 95], 100.0: [90, 90]}), grid)  # bracketed
    assert not short_of_optimum(probe(10.0, {}), grid)  # no cross-validation (one image in a class)


def test_cross_validation_never_sees_test_images(monkeypatch):
    X, y, ids = make_features([25] * 4, dim=8)
    X[:, 0] = np.arange(len(y))  # feature 0 names the row, so the solver's input reveals which images it saw
    splits = class_splits(ids, y, 10, max_test=15, n_splits=2, seed=0)
    seen: list[np.ndarray] = []
    real_fit = probes_module.fit_probe

    def spy(X_train, y_train, config, groups=None):
        seen.append(X_train[:, 0].astype(int))
        return real_fit(X_train, y_train, config, groups)

    monkeypatch.setattr(protocol_module, "fit_probe", spy)
    evaluate_splits(X, y, ids, splits, ProbeConfig(c_grid=(1.0, 10.0)))
    assert len(seen) == 2
    for k, rows in enumerate(seen):
        train, test = split_rows(splits, ids, 10, k)
        assert set(rows) == set(train) and not set(rows) & set(test)


def test_cv_folds_stay_inside_training_rows(monkeypatch):
    X, y, _ = make_features([12] * 3, dim=8)
    problems_seen = []
    real_sweep = probes_module._sweep_torch

    def spy(Xp, y_index, n_classes, problems, config):
        problems_seen.extend(problems)
        return real_sweep(Xp, y_index, n_classes, problems, config)

    monkeypatch.setattr(probes_module, "_sweep_torch", spy)
    fit_probe(X, y, ProbeConfig(c_grid=(1.0, 10.0), cv_folds=3))
    assert len(problems_seen) == 2 * 3 + 2  # every (C, fold) and one refit per C
    for _, rows in problems_seen:
        assert rows.max() < len(y)  # indices into the training rows handed to fit_probe, nothing else
    fold_rows = [set(rows.tolist()) for _, rows in problems_seen[:3]]
    held_out = [set(range(len(y))) - rows for rows in fold_rows]
    assert set().union(*held_out) == set(range(len(y))) and sum(map(len, held_out)) == len(y)


# --- PASCAL VOC -----------------------------------------------------------------------------------


def test_voc_multilabel_samples_one_per_positive_label():
    rows, targets = voc_training_samples([(3,), (0, 14), (), (14, 14, 2)])
    assert rows.tolist() == [0, 1, 1, 3, 3] and targets.tolist() == [3, 0, 14, 2, 14]


def test_evaluate_voc_scores_every_class_with_ap():
    rng = np.random.default_rng(0)
    n_classes, dim = 20, 40
    means = rng.normal(size=(n_classes, dim))

    def images(n):
        labels = [tuple(rng.choice(n_classes, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
        X = np.stack([means[list(image)].sum(0) + 0.7 * rng.normal(size=dim) for image in labels])
        return np.maximum(X, 0).astype(np.float32), labels

    (X_train, l_train), (X_val, l_val) = images(300), images(200)
    voc = evaluate_voc(X_train, l_train, X_val, l_val, ProbeConfig(c_grid=(1.0, 10.0)))
    assert voc.num_rows == 20 and voc["class"][0].as_py() == "aeroplane"
    ap = np.array(voc["ap"].to_pylist())
    assert (ap > 40).all() and (ap <= 100).all()  # far above chance (~10% positives per class)
    table, markdown = table6(voc)
    assert table.num_rows == 21 and "test server is not reachable" in markdown
    assert table["ours_ap_val"][20].as_py() == pytest.approx(ap.mean())


# --- tables, files, checks ------------------------------------------------------------------------


def test_tables_put_paper_numbers_beside_ours(tmp_path):
    X, y, ids = make_features([50] * 5, dim=16, separation=0.8)
    splits = pa.concat_tables([class_splits(ids, y, n, max_test=20, n_splits=3) for n in (15, 30)])
    runs = evaluate_splits(X, y, ids, splits, ProbeConfig(c_grid=(1.0, 10.0)), layer="fc7")
    assert run_problems(runs, layers=["fc7"], n_splits=3, n_classes=5) == []
    assert run_problems(runs, layers=["fc7", "conv5"], n_splits=4, n_classes=5)  # a missing layer and split

    # The non-pretrained net is scored from its own predictions on the same split's test images.
    _, test = split_rows(splits, ids, 30, 0)
    scratch = pa.Table.from_pylist([run_row(y[test], np.zeros_like(y[test]), 5, method="non-pretrained", layer="fc8",
                                            classifier="convnet", n_train=30, split_index=0, n_train_images=150)],
                                   schema=runs.schema)
    assert scratch["accuracy"][0].as_py() == pytest.approx(20.0)  # always class 0: 100% on one class of 5
    t4, md4 = table4(pa.concat_tables([runs, scratch]))
    assert t4.filter(pc.and_(pc.equal(t4["row"], "Non-pretrained convnet"), pc.equal(t4["n_train"], 30))
                     )["ours_mean"].to_pylist() == [pytest.approx(20.0)]
    pretrained30 = pc.and_(pc.equal(t4["row"], "ImageNet-pretrained convnet"), pc.equal(t4["n_train"], 30))
    row = t4.filter(pretrained30).to_pylist()[0]
    ours30 = np.array(runs.filter(pc.equal(runs["n_train"], 30))["accuracy"].to_pylist())
    assert row["ours_mean"] == pytest.approx(ours30.mean()) and row["ours_std"] == pytest.approx(ours30.std())
    assert (row["paper_mean"], row["paper_std"]) == PAPER_TABLE4["ImageNet-pretrained convnet"][30]
    assert "86.5 ± 0.5" in md4 and "Did not converge" not in md4
    _, flagged = table4(pa.concat_tables([runs, pa.Table.from_pylist([{**scratch.to_pylist()[0], "converged": False}],
                                                                     schema=runs.schema)]))
    assert (
        "Did not converge, included in the means: Non-pretrained convnet (convnet on fc8), 30/class, split 0."
        in flagged
    )

    t5, _ = table5(runs)
    assert set(t5.filter(pc.equal(t5["row"], "(Sohn et al., 2011)"))["n_train"].to_pylist()) == {15, 30, 45, 60}

    t7, md7 = table7({"caltech101": runs})
    softmax7 = t7.filter(pc.and_(pc.equal(t7["classifier"], "softmax"), pc.equal(t7["layer"], "fc7"))).to_pylist()[0]
    assert softmax7["ours_mean"] == pytest.approx(ours30.mean())
    assert softmax7["paper_mean"] == PAPER_TABLE7[("softmax", "fc7")][0][0]
    assert t7.filter(pc.equal(t7["layer"], "conv1"))["ours_mean"].to_pylist() == [None]

    curve, _ = fig7(runs)
    assert curve["n_train"].to_pylist() == [15, 30]
    png = render_fig7(curve, tmp_path / "fig7.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parquet, csv = write_table(runs, tmp_path / "out" / "runs")
    assert pq.read_table(parquet).equals(runs)
    assert csv.read_text().splitlines()[0].startswith('"method","layer"')
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_render_table7_draws_both_datasets_and_skips_layers_not_run(tmp_path):
    # Caltech-101 runs an SVM on conv5 and a softmax on fc7, Caltech-256 the softmax only: every other
    # (classifier, layer) has ours_mean None and must be left out of our lines, not break the plot.
    runs = {}
    for dataset, n_train in TABLE7_N_TRAIN.items():
        X, y, ids = make_features([n_train + 10] * 3, dim=8, separation=1.0)
        splits = class_splits(ids, y, n_train, max_test=10, n_splits=2)
        probes = [("softmax", "fc7")] + ([("svm", "conv5")] if dataset == "caltech101" else [])
        runs[dataset] = pa.concat_tables([evaluate_splits(X, y, ids, splits, ProbeConfig(kind=kind, c_grid=(1.0, 10.0)),
                                                          layer=layer) for kind, layer in probes])
    table, _ = table7(runs)
    ran = {(r["dataset"], r["classifier"], r["layer"]) for r in table.to_pylist() if r["ours_mean"] is not None}
    assert ran == {("caltech101", "softmax", "fc7"), ("caltech101", "svm", "conv5"), ("caltech256", "softmax", "fc7")}
    png = render_table7(table, tmp_path / "table7.png")
    assert png == tmp_path / "table7.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No runs at all: ours_mean is a null column, only the paper's points are drawn.
    paper_only, _ = table7({"caltech256": runs["caltech256"].slice(0, 0)})
    assert paper_only["ours_mean"].null_count == paper_only.num_rows
    assert render_table7(paper_only, tmp_path / "paper_only.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper_only.png", "table7.png"]  # no temp files left


def test_table7_names_the_target_as_the_user_does_and_flags_unconverged_fits(tmp_path):
    X, y, ids = make_features([40] * 3, dim=8, separation=1.0)
    splits = class_splits(ids, y, 30, max_test=10, n_splits=2)
    runs = evaluate_splits(X, y, ids, splits, ProbeConfig(kind="svm", c_grid=(1.0, 10.0)), layer="conv5")
    assert all(runs["converged"].to_pylist())
    paper, md = table7({"caltech101": runs})
    assert "caltech101 (30/class) paper" in md and "Did not converge" not in md
    # A user's own images in the Caltech-101 layout: their name, no paper column beside them.
    own, md = table7({"caltech101": runs}, names={"caltech101": "birds"})
    assert set(own["dataset"].to_pylist()) == {"birds"} and own["paper_mean"].null_count == own.num_rows
    assert "birds (30/class) ours" in md and "paper" not in md.split("\n")[2]
    assert render_table7(own, tmp_path / "own.png").read_bytes()[:4] == b"\x89PNG"
    stuck = pa.Table.from_pylist(
        [{**r, "converged": r["split_index"] != 1} for r in runs.to_pylist()], schema=runs.schema
    )
    _, md = table7({"caltech101": stuck}, names={"caltech101": "birds"})
    assert md.endswith("Did not converge, included in the means: birds: ImageNet-pretrained convnet (svm on conv5), "
                       "30/class, split 1.")


def test_publish_writes_a_table_where_a_reader_looks(tmp_path):
    table = pa.table({"row": ["a", "b"], "ours_mean": [1.0, None], "per_class": [[1.0], [2.0]]})
    record = publish(table, "| row |\n|---|", tmp_path / "table9", "table9")
    assert record["path"] == str(tmp_path / "table9" / "table9.parquet") and pq.read_table(record["path"]).equals(table)
    assert Path(record["csv"]).read_text().splitlines() == ['"row","ours_mean"', '"a",1', '"b",']
    assert Path(record["md"]).read_text() == "| row |\n|---|\n" and record["markdown"] == "| row |\n|---|"
    assert sorted(p.name for p in (tmp_path / "table9").iterdir()) == ["table9.csv", "table9.md", "table9.parquet"]


def test_load_features_reads_fixed_size_lists(tmp_path):
    folder = tmp_path / "features" / "layer=fc7"
    folder.mkdir(parents=True)
    vectors = np.arange(24, dtype=np.float16).reshape(6, 4)  # the features stage stores float16
    for part, rows in enumerate([[3, 0, 5], [1, 4, 2]]):
        # Dictionary-encoded strings, as zf_pipeline.features writes them.
        pq.write_table(pa.table({
            "image_id": pa.array([f"id{r}" for r in rows]).dictionary_encode(), "label": [r % 2 for r in rows],
            "split": pa.array(["train"] * 3).dictionary_encode(),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), 4),
        }), folder / f"part-{part:05d}.parquet")
    assert len(load_features(tmp_path / "features", "fc7", split="train")[2]) == 6
    X, y, ids = load_features(tmp_path / "features", "fc7")
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, vectors.astype(np.float32))
    assert y.tolist() == [0, 1, 0, 1, 0, 1] and ids.tolist() == [f"id{i}" for i in range(6)]
    with pytest.raises(FileNotFoundError, match="layer=conv5"):
        load_features(tmp_path / "features", "conv5")


def test_fig7_curve_down_to_one_training_image():
    X, y, ids = make_features([20] * 4, dim=16, separation=1.0)
    splits = protocol_splits(ids, y, [1, 2, 5], max_test=10, n_splits=2)
    config = ProbeConfig(c_grid=(1.0, 10.0), c_without_cv=3.0)
    runs = evaluate_splits(X, y, ids, splits, config)
    by_n = {n: runs.filter(pc.equal(runs["n_train"], n)) for n in (1, 2, 5)}
    assert by_n[1]["c"].to_pylist() == [3.0, 3.0]  # one image per class: no fold can validate, fixed C
    assert all(np.isnan(by_n[1]["cv_accuracy"].to_pylist()))
    assert set(by_n[5]["c"].to_pylist()) <= {1.0, 10.0}
    curve, _ = fig7(runs)
    assert curve["n_train"].to_pylist() == [1, 2, 5] and curve["n_splits"].to_pylist() == [2, 2, 2]


@pytest.mark.realdata
def test_caltech101_protocol_on_the_real_images(shared_data):
    from zf_pipeline.data.readers import open_imageset

    images = open_imageset("caltech101", shared_data / "caltech101")
    ids = [r.image_id for r in images.records]
    labels = np.array([r.label for r in images.records])
    splits = protocol_splits(ids, labels, [15, 30], max_test=50, n_splits=5, seed=0, class_names=images.classes)
    assert split_problems(splits) == []
    counts = np.bincount(labels)
    test30 = splits.filter(pc.and_(pc.equal(splits["n_train"], 30), pc.equal(splits["role"], "test")))
    per_class = np.bincount(test30["label"].to_numpy(), minlength=counts.size) / 5
    np.testing.assert_array_equal(per_class, np.minimum(50, counts - 30))  # 31..80 images: 1..50 test
