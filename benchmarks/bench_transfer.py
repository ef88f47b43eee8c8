"""Caltech-256 regularization sweep: scikit-learn on CPU against the batched torch probe, same features.

The protocol of Table 5 at 60 training images per class: 5 random splits, up to 50 test images per class,
C chosen from the grid by 3-fold cross-validation inside each split's training images, then a refit.
Features are generated at Caltech-256's size (256 classes, D=4096 for fc7 or 9216 for conv5/pool5)
unless --features points at the features stage's Parquet folder.

    python benchmarks/bench_transfer.py --device cpu --scale 0.1      # CPU smoke run
    python benchmarks/bench_transfer.py --device cuda                 # the full sweep on a GPU

scikit-learn on the full size takes hours; --sklearn-splits N times it on the first N splits only and
extrapolates its sweep time linearly to all splits (accuracy is compared on those N splits).

--sklearn-classes M (svm) times scikit-learn at full size without running its whole sweep. LinearSVC is
one-vs-rest: liblinear solves one independent binary problem per class, one after another, so a sweep's
CPU time is the sum of its binary solves. For every (C, fold or refit) problem of split 0, M random
classes' binary problems are solved by LinearSVC with the sweep's settings, single-threaded, in parallel
over --n-jobs processes (as the real sweep runs). Each solve's time minus the time of the same fit
stopped after one iteration (an upper bound on the data conversion liblinear does once per problem, not
per class) is scaled by K/M; the split's sweep time is the sum over problems divided by --n-jobs
(perfect parallel speed-up) and multiplied by the number of splits. Both choices can only shrink the
estimate, so the reported time ratio is an upper bound. scikit-learn's accuracy is not measured then.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning

from zf_pipeline.io import atomic_path
from zf_pipeline.transfer import ProbeConfig, class_splits, fit_probe, load_features, split_rows
from zf_pipeline.transfer.metrics import mean_per_class_accuracy_from_predictions
from zf_pipeline.transfer.probes import l2_normalize, preprocess, sklearn_fit, sweep_problems

log = logging.getLogger("bench_transfer")


def generate_features(n_classes: int, dim: int, seed: int, rank: int = 96, separation: float = 0.35):
    """Caltech-256-like features: class centres in a low-rank subspace, image noise in it and around it,
    rectified like a ReLU layer. 80 to 160 images per class, as in Caltech-256 (80 at least)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(80, 161, size=n_classes)
    y = np.repeat(np.arange(n_classes), counts)
    basis = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(rank)
    centres = rng.normal(size=(n_classes, rank)).astype(np.float32)
    X = np.empty((y.size, dim), dtype=np.float32)
    for start in range(0, y.size, 4096):  # chunks keep the float32 temporaries small at D=9216
        rows = slice(start, start + 4096)
        latent = separation * centres[y[rows]] + rng.normal(size=(len(y[rows]), rank)).astype(np.float32)
        X[rows] = np.maximum(latent @ basis + 0.5 * rng.normal(size=(len(y[rows]), dim)).astype(np.float32), 0)
    image_ids = np.array([f"{c:03d}/{i:06d}" for i, c in enumerate(y)], dtype=object)
    return X, y, image_ids


def run_sweep(X, y, image_ids, splits, n_train, split_indices, config):
    """Seconds and mean per-class test accuracy of each split's full sweep (CV over the grid + refit)."""
    n_classes = int(y.max()) + 1
    seconds, accuracies = [], []
    for k in split_indices:
        train, test = split_rows(splits, image_ids, n_train, k)
        X_train, y_train = X[train], y[train]  # selecting the split's rows is not part of the sweep
        start = time.perf_counter()
        probe = fit_probe(X_train, y_train, config)
        seconds.append(time.perf_counter() - start)
        accuracies.append(mean_per_class_accuracy_from_predictions(y[test], probe.predict(X[test]), n_classes))
        log.info("%s %s split %d: %.1f s, %.2f%%, C=%g, converged=%s", config.backend, config.kind, k,
                 seconds[-1], accuracies[-1], probe.c, probe.converged)
    return seconds, accuracies


def profile_split(X, y, image_ids, splits, n_train, config: ProbeConfig) -> None:
    """Split 0's torch sweep under torch.profiler (untimed): time per op on the device, and the host-device
    synchronizations (cudaStreamSynchronize: .item(), .tolist(), blocking copies) and copies it made."""
    from torch.profiler import ProfilerActivity, profile

    train, _ = split_rows(splits, image_ids, n_train, 0)
    X_train, y_train = X[train], y[train]
    cuda = config.device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        start = time.perf_counter()
        fit_probe(X_train, y_train, config)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=30))
    runtime = {e.key: e.count for e in events if e.key.startswith(("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                                    "cudaEventSynchronize", "cudaMemcpy"))}
    print(f"profiled {config.kind} {config.dtype} split 0: {wall:.2f} s under the profiler; runtime calls {runtime}")


def _time_binary(Xp: np.ndarray, positive: np.ndarray, c: float, config: ProbeConfig) -> tuple[float, float]:
    """Seconds of one class's binary LinearSVC solve, and of the same fit stopped after one iteration."""
    times = []
    for max_iter in (config.max_iter, 1):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sklearn_fit(Xp, positive.astype(np.int64), c, replace(config, max_iter=max_iter))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def sklearn_sweep_seconds_from_classes(X, y, train, config, n_sampled, seed):
    """scikit-learn's one-split sweep time (CPU seconds on config.n_jobs cores) from ``n_sampled`` classes'
    binary solves per (C, rows) problem (see the module docstring). Returns (estimate, seconds measured)."""
    classes, y_index = np.unique(y[train], return_inverse=True)
    Xp = preprocess(X[train], l2_normalize(X[train]).mean(axis=0))
    _, _, problems = sweep_problems(y_index, config)
    rng = np.random.default_rng(seed)
    jobs = [(c, rows, k) for c, rows in problems for k in rng.choice(classes.size, n_sampled, replace=False)]
    start = time.perf_counter()
    timed = Parallel(n_jobs=config.n_jobs)(delayed(_time_binary)(Xp[rows], y_index[rows] == k, c, config)
                                            for c, rows, k in jobs)
    wall = time.perf_counter() - start
    class_seconds = sum(max(full - one_iteration, 0.0) for full, one_iteration in timed)
    log.info("sklearn: %d binary solves (%d classes x %d problems) in %.1f s; %.1f CPU s of solving",
             len(jobs), n_sampled, len(problems), wall, class_seconds)
    return class_seconds * classes.size / n_sampled / config.n_jobs, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink classes and feature size by this factor")
    parser.add_argument("--layer", default="fc7", choices=["fc7", "conv5"], help="fc7: D=4096, conv5 (pool5): D=9216")
    parser.add_argument("--features", help="features/ folder of real Parquet features instead of generated ones")
    parser.add_argument("--kinds", nargs="+", default=["softmax", "svm"])
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--sklearn-splits", type=int, help="time scikit-learn on this many splits, extrapolate")
    parser.add_argument("--sklearn-classes", type=int,
                        help="svm: estimate scikit-learn's sweep from this many classes' binary solves per problem")
    parser.add_argument("--c-grid", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--cv-folds", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--dtype", nargs="+", default=["float64"], choices=["float32", "float64", "tf32"],
                        help="torch probe precision(s), each timed against the same scikit-learn run; "
                             "tf32: float32 with TensorFloat-32 matrix products (CUDA)")
    parser.add_argument("--preconditioner-rank", type=int, default=256)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count(), help="parallel scikit-learn fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--profile", action="store_true",
                        help="then profile split 0's torch sweep once per kind (first --dtype), untimed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.features:
        X, y, image_ids = load_features(args.features, args.layer)
    else:
        dim = {"fc7": 4096, "conv5": 9216}[args.layer]
        X, y, image_ids = generate_features(max(2, round(256 * args.scale)), max(8, round(dim * args.scale)), args.seed)
    splits = class_splits(image_ids, y, args.n_train, max_test=50, n_splits=args.splits, seed=args.seed)
    n_test = splits.filter(pc.equal(splits["role"], "test")).num_rows // args.splits
    log.info("features %s, %d classes, %d train + %d test images per split", X.shape, y.max() + 1,
             (y.max() + 1) * args.n_train, n_test)
    sklearn_splits = list(range(args.sklearn_splits or args.splits))

    if args.device.startswith("cuda"):  # CUDA context and kernels load once, outside the timing
        fit_probe(X[:64], np.arange(64) % 2, ProbeConfig(backend="torch", device=args.device, c_grid=(1.0,)))
    results = []
    for kind in args.kinds:
        common = dict(kind=kind, c_grid=tuple(args.c_grid), cv_folds=args.cv_folds, tol=args.tol,
                      max_iter=args.max_iter, seed=args.seed)
        sklearn_config = ProbeConfig(backend="sklearn", n_jobs=args.n_jobs, **common)
        if args.sklearn_classes and kind == "svm":
            train, _ = split_rows(splits, image_ids, args.n_train, 0)
            split_s, _ = sklearn_sweep_seconds_from_classes(X, y, train, sklearn_config, args.sklearn_classes,
                                                            args.seed)
            cpu_s, cpu_acc, timed = [split_s], [float("nan")], f"{args.sklearn_classes} classes x split 0"
        else:
            cpu_s, cpu_acc = run_sweep(X, y, image_ids, splits, args.n_train, sklearn_splits, sklearn_config)
            timed = f"{len(sklearn_splits)} splits"
        def torch_config(dtype: str) -> ProbeConfig:  # also sets the global TF32 switch for matrix products
            torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
            return ProbeConfig(backend="torch", device=args.device, dtype="float32" if dtype == "tf32" else dtype,
                               preconditioner_rank=args.preconditioner_rank, **common)

        for dtype in args.dtype:
            torch_s, torch_acc = run_sweep(X, y, image_ids, splits, args.n_train, range(args.splits),
                                           torch_config(dtype))
            cpu_total = float(np.mean(cpu_s)) * args.splits  # extrapolated when fewer splits were timed
            same = torch_acc[: len(cpu_acc)]
            results.append(
                dict(kind=kind, features=list(X.shape), n_classes=int(y.max()) + 1, splits=args.splits,
                     sklearn_timed=timed, c_grid=args.c_grid, cv_folds=args.cv_folds,
                     sklearn_cpu_s=cpu_total, torch_s=float(np.sum(torch_s)), torch_split_s=torch_s,
                     device=args.device, dtype=dtype, time_ratio=float(np.sum(torch_s)) / cpu_total,
                     sklearn_accuracy=float(np.mean(cpu_acc)), torch_accuracy=float(np.mean(torch_acc)),
                     torch_accuracy_same_splits=float(np.mean(same)),
                     accuracy_diff=float(np.mean(same) - np.mean(cpu_acc)))
            )
        if args.profile:
            profile_split(X, y, image_ids, splits, args.n_train, torch_config(args.dtype[0]))

    print(f"\nCaltech-256 sweep, {args.n_train}/class, {args.splits} splits, C grid {args.c_grid}, "
          f"{args.cv_folds}-fold CV; features {list(X.shape)}; torch on {args.device}, "
          f"sklearn on {args.n_jobs} CPU processes")
    print(
        "| classifier | torch dtype | sklearn CPU s | torch s | time ratio | sklearn acc % | torch acc % "
        "| diff (points) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        timed = r["sklearn_timed"]
        extrapolated = "" if timed == f"{r['splits']} splits" else f" (estimated from {timed})"
        print(f"| {r['kind']} | {r['dtype']} | {r['sklearn_cpu_s']:.1f}{extrapolated} | {r['torch_s']:.1f} "
              f"| {100 * r['time_ratio']:.2f}% | {r['sklearn_accuracy']:.2f} "
              f"| {r['torch_accuracy_same_splits']:.2f} | {r['accuracy_diff']:+.2f} |")
    if args.json:
        with atomic_path(args.json) as path, open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
