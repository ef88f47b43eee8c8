"""Linear classifiers on frozen features (section 5): a softmax or a linear SVM on top of layer k.

Two backends solve the same objectives, so that either can stand in for the other:

- ``sklearn``, the reference: ``LogisticRegression`` (multinomial, L-BFGS) and ``LinearSVC``
  (one-vs-rest squared hinge, liblinear).
- ``torch``, the probe: the same objectives by full-batch preconditioned L-BFGS, on CPU or GPU. The whole
  regularization sweep (every C of the grid, every cross-validation fold, and the refit on the full
  training split) is ONE batched program over a ``[G, D*K + K]`` parameter tensor: each problem keeps its
  own history and step, problems sharing rows share one matrix product, and converged problems leave the
  batch (see :class:`_SweepObjective` and :func:`zf_pipeline.transfer.lbfgs.batched_lbfgs`).

Objectives, for N training images, weights W [D, K] and biases b [K] (per-sample averaged, as sklearn's
L-BFGS solver sees them, so one gradient tolerance means the same in both backends):

- softmax: mean cross-entropy + ||W||^2 / (2 C N); the bias is not penalized (as in LogisticRegression).
- svm: mean over images of sum over classes of max(0, 1 - y_k f_k(x))^2 + (||W||^2 + ||b||^2) / (2 C N),
  y_k = +-1; the bias is penalized, as liblinear does (intercept_scaling=1).

Preprocessing (fitted on the training split only): L2-normalize each feature vector, then subtract the
training mean. C is chosen by stratified K-fold cross-validation inside the training split, scored by
mean per-class accuracy; ties go to the smallest C (the strongest regularization).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.svm import LinearSVC

from zf_pipeline.transfer.lbfgs import batched_lbfgs, index_on
from zf_pipeline.transfer.metrics import mean_per_class_accuracy_from_predictions

log = logging.getLogger(__name__)

Kind = Literal["svm", "softmax"]
Backend = Literal["sklearn", "torch"]
# Up to 1e4: on real L2-normalized features C = 1000 won on every Table 4 split of the Imagenette run
# with a grid ending there; with 1e4 added it still won 9 of 10, and 1e4 none (docs/results/reproduction.md).
DEFAULT_C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


@dataclass(frozen=True)
class ProbeConfig:
    """How to train one linear classifier and choose its regularization."""

    kind: Kind = "softmax"
    backend: Backend = "torch"
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    cv_folds: int = 3
    # Used when a class has a single training image, so no fold can both train and validate on it.
    c_without_cv: float = 10.0
    seed: int = 0
    # Stop when every |gradient| of the averaged objective is below tol (sklearn's default 1e-4 stops early).
    tol: float = 1e-5
    max_iter: int = 1000
    device: str = "cpu"  # torch backend: 'cpu', 'cuda', ...
    # torch backend: float32 reaches tol=1e-5 too (approximate Wolfe line search); on CPU it is twice as fast.
    dtype: Literal["float32", "float64"] = "float64"
    # torch backend: top eigenpairs of the feature covariance kept by the preconditioner.
    preconditioner_rank: int = 256
    n_jobs: int = 1  # sklearn backend: (C, fold) fits in parallel

    def __post_init__(self) -> None:
        if self.kind not in ("svm", "softmax") or self.backend not in ("sklearn", "torch"):
            raise ValueError(f"unknown probe kind/backend {self.kind!r}/{self.backend!r}")
        if self.preconditioner_rank < 1:
            raise ValueError(f"preconditioner_rank must be >= 1, got {self.preconditioner_rank}")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError(f"c_grid must hold positive values, got {self.c_grid}")


@dataclass
class Probe:
    """A fitted linear classifier, its preprocessing and how its C was chosen."""

    kind: Kind
    classes: np.ndarray  # label of each output column
    mean: np.ndarray  # [D] training mean of the L2-normalized features
    weight: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    c: float
    cv_accuracy: dict[float, float] = field(default_factory=dict)  # C -> mean per-class accuracy (%) over folds
    cv_fold_accuracy: dict[float, list[float]] = field(default_factory=dict)  # C -> the same, fold by fold
    converged: bool = True  # every fit of the sweep reached tol within max_iter
    n_iter: int = 0  # iterations of the final fit

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores ``[N, K]``: logits (softmax) or margins (svm)."""
        return preprocess(X, self.mean) @ self.weight + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The label with the highest score."""
        return self.classes[np.argmax(self.decision_function(X), axis=1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``[N, K]`` (for a softmax probe)."""
        if self.kind != "softmax":
            raise ValueError("predict_proba needs a softmax probe")
        scores = self.decision_function(X)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        return scores / scores.sum(axis=1, keepdims=True)


def _l2_normalized(X: torch.Tensor) -> torch.Tensor:  # on any device, for the numpy API and the sweeps alike
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    return _l2_normalized(torch.tensor(np.asarray(X, dtype=np.float32))).numpy()


def preprocess(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """L2-normalize the rows, then subtract the training mean."""
    return l2_normalize(X) - mean


def cv_folds(
    y: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (fit, validation) index pairs inside the training split; samples sharing a group stay
    on one side. Fewer folds when the smallest class is smaller than ``n_folds``; none when it has one image."""
    n_folds = min(n_folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if n_folds < 2:
        return []
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def fit_probe(X: np.ndarray, y: np.ndarray, config: ProbeConfig, groups: np.ndarray | None = None) -> Probe:
    """Choose C by cross-validation inside ``(X, y)`` (the training split only), then fit on all of it.

    ``groups`` (optional) keeps samples of one image in one fold (PASCAL VOC: one sample per label).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be [N, D] with one label per row, got X {X.shape} and y {y.shape}")
    classes, y_index = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"need at least two classes to train a classifier, got {classes.tolist()}")
    c_grid, folds, problems = sweep_problems(y_index, config, groups)
    solve = _sweep_torch if config.backend == "torch" else _sweep_sklearn
    sweep = solve(X, y_index, classes.size, problems, config)

    scores = np.empty((len(c_grid), len(folds)))
    for fi, (_, held_out) in enumerate(folds):  # problem ci * len(folds) + fi holds out fold fi's rows
        predicted = sweep.predict(held_out, range(fi, len(c_grid) * len(folds), len(folds)))
        scores[:, fi] = [mean_per_class_accuracy_from_predictions(y_index[held_out], p, classes.size)
                         for p in predicted]
    cv_accuracy = {c: float(scores[ci].mean()) for ci, c in enumerate(c_grid)} if folds else {}
    best = max(range(len(c_grid)), key=lambda ci: (cv_accuracy.get(c_grid[ci], 0.0), -ci))
    final = len(c_grid) * len(folds) + best
    if not all(sweep.converged):
        log.warning("%s %s probe: %d of %d fits did not reach tol=%g in %d iterations",
                    config.backend, config.kind, len(sweep.converged) - sum(sweep.converged),
                    len(sweep.converged), config.tol, config.max_iter)
    weight, bias = sweep.parameters(final)
    return Probe(
        kind=config.kind, classes=classes, mean=sweep.mean, weight=weight, bias=bias, c=c_grid[best],
        cv_accuracy=cv_accuracy,
        cv_fold_accuracy={c: scores[ci].tolist() for ci, c in enumerate(c_grid)} if folds else {},
        converged=all(sweep.converged), n_iter=sweep.iterations[final],
    )


def sweep_problems(
    y_index: np.ndarray, config: ProbeConfig, groups: np.ndarray | None = None
) -> tuple[tuple[float, ...], list[tuple[np.ndarray, np.ndarray]], list[tuple[float, np.ndarray]]]:
    """The C grid, the CV folds and the sweep's (C, fit rows) problems: one per C and fold, then one refit
    per C on all training rows (in that order)."""
    folds = cv_folds(y_index, config.cv_folds, config.seed, groups)
    c_grid = tuple(sorted(config.c_grid)) if folds else (config.c_without_cv,)
    problems = [(c, fit) for c in c_grid for fit, _ in folds] + [(c, np.arange(len(y_index))) for c in c_grid]
    return c_grid, folds, problems


def sklearn_fit(Xp: np.ndarray, y_index: np.ndarray, c: float, config: ProbeConfig):
    """The reference backend's fit of one (C, rows) problem on preprocessed features: (model, converged)."""
    if config.kind == "softmax":
        model = LogisticRegression(C=c, tol=config.tol, max_iter=config.max_iter)
    else:
        # The primal (trust-region Newton) solver: liblinear's dual needs thousands of passes at the large C that
        # L2-normalized features want (C >= 1000), the primal tens of iterations at any C.
        model = LinearSVC(C=c, loss="squared_hinge", tol=config.tol, max_iter=config.max_iter, dual=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(Xp, y_index)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


@dataclass
class _Sweep:
    """A backend's solved sweep, left where it was computed (the torch probe's device): the host reads only
    the held-out predictions and the chosen problem's parameters."""

    features: torch.Tensor  # [N, D] preprocessed training rows
    mean: np.ndarray  # [D] training mean of the L2-normalized features
    weights: torch.Tensor  # [G, D, K]
    biases: torch.Tensor  # [G, K]
    converged: list[bool]  # per problem
    iterations: list[int]  # per problem

    def predict(self, rows: np.ndarray, problems: range) -> np.ndarray:
        """Predicted class indices ``[len(problems), len(rows)]`` of training rows, one product for all problems."""
        device = self.features.device
        at = torch.tensor(problems, device=device)
        (d, k), m = self.weights.shape[1:], len(problems)
        X = self.features[torch.as_tensor(rows, device=device)]
        scores = (X @ self.weights[at].permute(1, 0, 2).reshape(d, m * k)).view(-1, m, k) + self.biases[at]
        return scores.argmax(dim=2).T.cpu().numpy()

    def parameters(self, problem: int) -> tuple[np.ndarray, np.ndarray]:
        """Weight [D, K] and bias [K] of one problem, float32 copies on the host."""
        weight, bias = (t[problem].to("cpu", torch.float32, copy=True).numpy() for t in (self.weights, self.biases))
        return weight, bias


def _preprocessed(X: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`preprocess` with the training mean, computed on ``device`` (float32): the raw rows cross to the
    device once, and their mean comes back."""
    X = _l2_normalized(torch.tensor(X, device=device))
    mean = X.mean(dim=0)
    return X.sub_(mean), mean.cpu().numpy()


def _sweep_sklearn(X, y_index, n_classes, problems, config) -> _Sweep:
    """The reference: one sklearn fit per (C, rows) problem, in parallel over ``config.n_jobs`` processes."""
    features, mean = _preprocessed(X, "cpu")
    Xp = features.numpy()
    basis = row_space(Xp) if Xp.shape[0] < Xp.shape[1] else None
    if basis is not None:
        Xp = Xp @ basis
    fits = Parallel(n_jobs=config.n_jobs)(
        delayed(sklearn_fit)(Xp[rows], y_index[rows], c, config) for c, rows in problems
    )
    # A fold's fit set may lack a class (grouped folds): that class then never wins.
    weights = np.zeros((len(fits), Xp.shape[1], n_classes), dtype=np.float32)
    biases = np.full((len(fits), n_classes), -np.inf, dtype=np.float32)
    for g, (model, _) in enumerate(fits):
        coef, intercept = model.coef_, model.intercept_
        if model.classes_.size == 2:  # sklearn keeps one column for two classes; +-f/2 ranks them the same
            coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
        weights[g][:, model.classes_], biases[g][model.classes_] = coef.T, intercept
    if basis is not None:  # back from the row-space coordinates to the features'
        weights = np.einsum("dr,grk->gdk", basis, weights)
    return _Sweep(features, mean, torch.from_numpy(weights), torch.from_numpy(biases), [ok for _, ok in fits],
                  [int(np.max(model.n_iter_)) for model, _ in fits])


def row_space(X: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``[D, r]`` of the span of the rows of ``X`` (``r <= N``).

    With fewer training images than dimensions, every minimizer of either objective lies in that span
    (the features enter only through w.x, and any part of w orthogonal to every row only adds to ||w||), so
    fitting on ``X @ basis`` and mapping the weights back by ``basis`` is exact, for every fold too (its rows
    span a subspace). liblinear then works on N instead of D columns: conv4's 9,216 dims become 400.
    """
    _, singular, vt = np.linalg.svd(X, full_matrices=False)
    return np.ascontiguousarray(vt[singular > singular[0] * 1e-6].T)


def _sweep_torch(X, y_index, n_classes, problems, config) -> _Sweep:
    """All (C, rows) problems as one batched program, each minimized by its own preconditioned L-BFGS."""
    device, dtype = torch.device(config.device), getattr(torch, config.dtype)
    features, mean = _preprocessed(X, device)
    features = features.to(dtype)
    labels = torch.as_tensor(y_index, device=device, dtype=torch.long)
    objective = _SweepObjective(features, labels, n_classes, problems, config.kind, config.preconditioner_rank)
    start = torch.zeros(len(problems), objective.size, device=device, dtype=dtype)
    params, grad_max, iterations = batched_lbfgs(objective.value_and_grad, objective.precondition, start,
                                                 tol=config.tol, max_iter=config.max_iter)
    d_k = X.shape[1] * n_classes
    return _Sweep(features, mean, params[:, :d_k].view(len(problems), -1, n_classes), params[:, d_k:],
                  (grad_max <= config.tol).tolist(), iterations)


class _SweepObjective:
    """The sweep's objectives, gradients and preconditioner for any subset of its problems.

    Problems sharing training rows (one fold, or the whole split for the refits) share one gathered copy
    of those rows, so each set costs one ``[n, D] x [D, m*K]`` product forward and one back, and held-out
    rows cost nothing. The preconditioner approximates each problem's Hessian by ``a * Sigma + I / (C n)``:
    Sigma, the split's feature covariance, as its top eigenpairs plus the mean of the other eigenvalues,
    and a the loss's curvature at W = 0 (1/K for the softmax, 2 for the squared hinge), exact there up to
    a fold's rows differing from the split's. It makes the weakly regularized (large C) problems about
    as easy as the others; L-BFGS corrects the rest.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, n_classes: int, problems, kind: Kind, rank: int):
        self.kind, self.n_classes, self.dim = kind, n_classes, X.shape[1]
        self.size = self.dim * n_classes + n_classes
        keys: dict[bytes, int] = {}
        self.set_of = [keys.setdefault(np.asarray(rows).tobytes(), len(keys)) for _, rows in problems]
        first = {s: rows for (_, rows), s in zip(problems, self.set_of)}
        self.sets = []
        for s in range(len(keys)):
            rows = torch.as_tensor(first[s], device=X.device)
            self.sets.append((X[rows], torch.nn.functional.one_hot(y[rows], n_classes).to(X.dtype)))
        counts = torch.tensor([len(rows) for _, rows in problems], device=X.device, dtype=X.dtype)
        self.rho = 1.0 / (torch.tensor([c for c, _ in problems], device=X.device, dtype=X.dtype) * counts)
        self.curvature = 1.0 / n_classes if kind == "softmax" else 2.0
        self.basis, self.eigenvalues, self.bulk = _top_spectrum(X, rank)
        self._batches: dict[tuple[int, ...], tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]] = {}

    def _batch(self, ids: list[int]) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """``ids`` on the device, and (row set, positions in ids, problem indices) per row set present in ids.
        Cached, as a batch changes only when problems retire or backtrack."""
        key = tuple(ids)
        if key not in self._batches:
            device = self.rho.device
            self._batches[key] = index_on(ids, device), [
                (s, index_on(pos, device), index_on([ids[i] for i in pos], device))
                for s in sorted(set(self.set_of[p] for p in ids))
                if (pos := [i for i, p in enumerate(ids) if self.set_of[p] == s])
            ]
        return self._batches[key]

    def value_and_grad(self, params: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        d, k = self.dim, self.n_classes
        value, grad = params.new_empty(len(ids)), torch.empty_like(params)
        for s, pos, problem in self._batch(ids)[1]:
            X, targets = self.sets[s]
            n, m = X.shape[0], len(pos)
            W, b = params[pos, : d * k].view(m, d, k), params[pos, d * k :]
            rho = self.rho[problem]
            logits = (X @ W.permute(1, 0, 2).reshape(d, m * k)).view(n, m, k).add_(b)
            if self.kind == "softmax":
                log_norm = torch.logsumexp(logits, dim=2)
                loss = (log_norm - (logits * targets[:, None, :]).sum(dim=2)).mean(dim=0)
                d_logits = logits.sub_(log_norm[..., None]).exp_().sub_(targets[:, None, :])  # in place: [n, m, K]
                regularized = W.square().sum(dim=(1, 2))
            else:  # one-vs-rest squared hinge, targets +-1
                signs = 2.0 * targets[:, None, :] - 1.0
                margin = (1.0 - signs * logits).clamp_min(0.0)
                loss = margin.square().sum(dim=2).mean(dim=0)
                d_logits = -2.0 * signs * margin
                regularized = W.square().sum(dim=(1, 2)) + b.square().sum(dim=1)  # liblinear penalizes the bias
            d_logits /= n
            grad_w = (X.T @ d_logits.view(n, m * k)).view(d, m, k).permute(1, 0, 2) + rho[:, None, None] * W
            grad_b = d_logits.sum(dim=0) + (rho[:, None] * b if self.kind == "svm" else 0.0)
            value[pos] = loss + 0.5 * rho * regularized
            grad[pos] = torch.cat([grad_w.reshape(m, d * k), grad_b], dim=1)
        return value, grad

    def precondition(self, v: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """``(a * Sigma + rho I)^-1 v`` per problem (rho = 1/(C n)), the bias by its own curvature."""
        d, k, m = self.dim, self.n_classes, len(ids)
        rho = self.rho[self._batch(ids)[0]]
        bulk = self.curvature * self.bulk + rho  # [m]
        excess = 1.0 / (self.curvature * self.eigenvalues + rho[:, None]) - 1.0 / bulk[:, None]  # [m, r]
        v_w = v[:, : d * k].view(m, d, k)
        out_w = self.basis @ (excess[..., None] * (self.basis.T @ v_w))
        out_w.addcdiv_(v_w, bulk[:, None, None])
        bias_curvature = self.curvature + (rho if self.kind == "svm" else torch.zeros_like(rho))
        return torch.cat([out_w.reshape(m, d * k), v[:, d * k :] / bias_curvature[:, None]], dim=1)


def _top_spectrum(
    X: torch.Tensor, rank: int, power_iterations: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``rank`` eigenvectors [D, r] and eigenvalues [r] of X^T X / n (randomized subspace iteration,
    seeded), and the mean of the remaining eigenvalues (0 when r covers the rank)."""
    n, d = X.shape
    r = min(rank, n, d)
    generator = torch.Generator(device=X.device).manual_seed(0)
    basis = torch.randn(d, r, generator=generator, device=X.device, dtype=X.dtype)
    for _ in range(power_iterations):
        basis = torch.linalg.qr(X.T @ (X @ basis)).Q
    projected = X @ basis
    eigenvalues, rotation = torch.linalg.eigh(projected.T @ projected / n)
    eigenvalues = eigenvalues.clamp_min(0.0)
    rest = min(n, d) - r
    bulk = (X.square().sum() / n - eigenvalues.sum()).clamp_min(0.0) / rest if rest else X.new_zeros(())
    return basis @ rotation, eigenvalues, bulk
