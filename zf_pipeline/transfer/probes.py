"""Linear classifiers on frozen features (section 5): a softmax or a linear SVM on top of layer k.

Two backends solve the same objectives, so that either can stand in for the other:

- ``sklearn``, the reference: ``LogisticRegression`` (multinomial, L-BFGS) and ``LinearSVC``
  (one-vs-rest squared hinge, liblinear).
- ``torch``, the probe: the same objectives by full-batch L-BFGS with a strong-Wolfe line search, on CPU
  or GPU. The whole regularization sweep (every C of the grid, every cross-validation fold, and the
  refit on the full training split) is ONE batched problem with a ``[G, D, K]`` weight tensor: the
  problems are independent, so minimizing their sum minimizes each of them.

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
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.svm import LinearSVC

from zf_pipeline.transfer.metrics import mean_per_class_accuracy_from_predictions

log = logging.getLogger(__name__)

Kind = Literal["svm", "softmax"]
Backend = Literal["sklearn", "torch"]
DEFAULT_C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


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
    # torch backend: float32 stalls near |gradient| ~1e-5 (the line search cannot see smaller loss changes).
    dtype: Literal["float32", "float64"] = "float64"
    n_jobs: int = 1  # sklearn backend: (C, fold) fits in parallel

    def __post_init__(self) -> None:
        if self.kind not in ("svm", "softmax") or self.backend not in ("sklearn", "torch"):
            raise ValueError(f"unknown probe kind/backend {self.kind!r}/{self.backend!r}")
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


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(np.float32).tiny)


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
    mean = l2_normalize(X).mean(axis=0)
    Xp = preprocess(X, mean)
    folds = cv_folds(y_index, config.cv_folds, config.seed, groups)
    c_grid = tuple(sorted(config.c_grid)) if folds else (config.c_without_cv,)
    solve = _sweep_torch if config.backend == "torch" else _sweep_sklearn
    # One (C, fit rows) problem per C and fold, then one refit per C on all training rows.
    problems = [(c, fit) for c in c_grid for fit, _ in folds] + [(c, np.arange(len(y))) for c in c_grid]
    weights, biases, converged, iterations = solve(Xp, y_index, classes.size, problems, config)

    cv_accuracy: dict[float, float] = {}
    for ci, c in enumerate(c_grid):
        scores = []
        for fi, (_, held_out) in enumerate(folds):
            g = ci * len(folds) + fi
            predicted = np.argmax(Xp[held_out] @ weights[g] + biases[g], axis=1)
            scores.append(mean_per_class_accuracy_from_predictions(y_index[held_out], predicted, classes.size))
        if scores:
            cv_accuracy[c] = float(np.mean(scores))
    best = max(range(len(c_grid)), key=lambda ci: (cv_accuracy.get(c_grid[ci], 0.0), -ci))
    final = len(c_grid) * len(folds) + best
    if not all(converged):
        log.warning("%s %s probe: %d of %d fits did not reach tol=%g in %d iterations",
                    config.backend, config.kind, len(converged) - sum(converged), len(converged),
                    config.tol, config.max_iter)
    return Probe(
        kind=config.kind, classes=classes, mean=mean, weight=weights[final], bias=biases[final],
        c=c_grid[best], cv_accuracy=cv_accuracy, converged=all(converged), n_iter=iterations[final],
    )


def _sklearn_fit(Xp: np.ndarray, y_index: np.ndarray, c: float, config: ProbeConfig):
    if config.kind == "softmax":
        model = LogisticRegression(C=c, tol=config.tol, max_iter=config.max_iter)
    else:
        model = LinearSVC(C=c, loss="squared_hinge", tol=config.tol, max_iter=config.max_iter, dual="auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(Xp, y_index)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


def _sweep_sklearn(Xp, y_index, n_classes, problems, config):
    """The reference: one sklearn fit per (C, rows) problem, in parallel over ``config.n_jobs`` processes."""
    fits = Parallel(n_jobs=config.n_jobs)(
        delayed(_sklearn_fit)(Xp[rows], y_index[rows], c, config) for c, rows in problems
    )
    weights, biases = [], []
    for model, _ in fits:
        coef, intercept = model.coef_, model.intercept_
        if model.classes_.size == 2:  # sklearn keeps one column for two classes; +-f/2 ranks them the same
            coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
        # A fold's fit set may lack a class (grouped folds): that class then never wins.
        weight = np.zeros((Xp.shape[1], n_classes), dtype=np.float32)
        bias = np.full(n_classes, -np.inf, dtype=np.float32)
        weight[:, model.classes_], bias[model.classes_] = coef.T, intercept
        weights.append(weight)
        biases.append(bias)
    return weights, biases, [ok for _, ok in fits], [int(np.max(model.n_iter_)) for model, _ in fits]


def _sweep_torch(Xp, y_index, n_classes, problems, config):
    """All (C, rows) problems as one batched objective, each minimized by its own L-BFGS (see :func:`batched_lbfgs`)."""
    device, dtype = torch.device(config.device), getattr(torch, config.dtype)
    X = torch.as_tensor(Xp, device=device, dtype=dtype)
    n, d = X.shape
    g_count = len(problems)
    y = torch.as_tensor(y_index, device=device, dtype=torch.long)
    masks = torch.zeros(g_count, n, device=device, dtype=dtype)
    for g, (_, rows) in enumerate(problems):
        masks[g, torch.as_tensor(rows, device=device)] = 1.0
    counts = masks.sum(dim=1)
    penalty = 1.0 / (2.0 * torch.tensor([c for c, _ in problems], device=device, dtype=dtype) * counts)
    signs = 2.0 * torch.nn.functional.one_hot(y, n_classes).to(dtype) - 1.0  # svm targets +-1

    def objectives(params: torch.Tensor) -> torch.Tensor:
        W, b = params[:, : d * n_classes].view(g_count, d, n_classes), params[:, d * n_classes :]
        # One [N, D] x [D, G*K] product for all problems (a batched matmul would copy X G times).
        logits = (X @ W.permute(1, 0, 2).reshape(d, -1)).view(n, g_count, n_classes).transpose(0, 1)
        logits = logits + b[:, None, :]
        if config.kind == "softmax":
            true_logit = logits.gather(2, y.expand(g_count, n)[..., None])[..., 0]
            per_image = torch.logsumexp(logits, dim=2) - true_logit
            regularizer = W.square().sum(dim=(1, 2))
        else:
            per_image = torch.clamp(1.0 - signs * logits, min=0.0).square().sum(dim=2)
            regularizer = params.square().sum(dim=1)  # liblinear penalizes the bias too
        return (per_image * masks).sum(dim=1) / counts + penalty * regularizer

    start = torch.zeros(g_count, d * n_classes + n_classes, device=device, dtype=dtype)
    params, grad_max, iterations = batched_lbfgs(objectives, start, tol=config.tol, max_iter=config.max_iter)
    params = params.cpu().numpy()
    weights = [p[: d * n_classes].reshape(d, n_classes).astype(np.float32) for p in params]
    biases = [p[d * n_classes :].astype(np.float32) for p in params]
    return weights, biases, (grad_max <= config.tol).tolist(), iterations.tolist()


def batched_lbfgs(
    objectives: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    history: int = 20,
    max_halvings: int = 40,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimize G independent smooth convex objectives at once: ``objectives(x [G, P]) -> [G]``.

    Every problem keeps its own L-BFGS history and its own step size (backtracking to the Armijo
    condition), so a well-conditioned problem is not held back by an ill-conditioned one, as it is
    when one optimizer minimizes their sum. A problem stops moving once its max |gradient| <= tol.
    Returns the minimizers, each problem's final max |gradient| and its number of iterations.
    """

    def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        f = objectives(x)
        (g,) = torch.autograd.grad(f.sum(), x)  # the sum's gradient holds each problem's own gradient
        return f.detach(), g

    x = start.clone()
    f, g = value_and_grad(x)
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, 1 / s.y) per update
    iterations = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        active = g.abs().amax(dim=1) > tol
        if not active.any():
            break
        iterations += active
        # Two-loop recursion: d = -H g, with H from each problem's own (s, y) pairs.
        q, alphas = g.clone(), []
        for s, y, rho in reversed(pairs):
            alpha = rho * (s * q).sum(dim=1)
            q -= alpha[:, None] * y
            alphas.append(alpha)
        if pairs:
            s, y, _ = pairs[-1]
            yy = (y * y).sum(dim=1)
            gamma = torch.where(yy > 0, (s * y).sum(dim=1) / yy.clamp_min(torch.finfo(yy.dtype).tiny), 1.0)
        else:  # first step: length 1 along the steepest descent, the line search then scales it
            gamma = 1.0 / g.norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
        q *= gamma[:, None]
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            q += s * (alpha - rho * (y * q).sum(dim=1))[:, None]
        direction = -q * active[:, None]
        slope = (g * direction).sum(dim=1)
        uphill = slope >= 0  # lost curvature information: restart along the gradient
        direction = torch.where(uphill[:, None], -g * active[:, None], direction)
        slope = torch.where(uphill, -(g * g).sum(dim=1) * active, slope)

        step = torch.ones_like(f)
        for _ in range(max_halvings):
            f_new, g_new = value_and_grad(x + step[:, None] * direction)
            accepted = f_new <= f + 1e-4 * step * slope
            if accepted.all():
                break
            step = torch.where(accepted, step, step / 2)
        else:  # problems that found no descent step stay where they are
            step = torch.where(accepted, step, 0.0)
            f_new, g_new = value_and_grad(x + step[:, None] * direction)
        s = step[:, None] * direction
        y = g_new - g
        sy = (s * y).sum(dim=1)
        keep = sy > 1e-10 * (s.norm(dim=1) * y.norm(dim=1))  # curvature condition, else skip this pair
        pairs.append((s * keep[:, None], y * keep[:, None], torch.where(keep, 1.0 / sy, 0.0)))
        pairs = pairs[-history:]
        x, f, g = x + s, f_new, g_new
    return x.detach(), g.abs().amax(dim=1), iterations
