"""Many small convex problems minimized at once: a batched, preconditioned L-BFGS (the torch probe's solver)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def batched_lbfgs(
    value_and_grad: Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]],
    precondition: Callable[[torch.Tensor, list[int]], torch.Tensor],
    start: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    history: int = 5,
    max_halvings: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Minimize G independent smooth convex objectives at once, from ``start`` [G, P].

    ``value_and_grad(x [m, P], ids)`` returns the values [m] and gradients [m, P] of the problems ``ids``
    (row indices of ``start``) at x; ``precondition(v, ids)`` applies an approximate inverse Hessian.
    Every problem keeps its own L-BFGS history (initial inverse Hessian: the preconditioner, scaled by
    s.y / y.H0.y) and its own step (backtracking to Armijo, or to the approximate Wolfe condition of
    Hager and Zhang once loss changes fall below rounding, which lets float32 reach small gradients).
    A problem leaves the batch once its max |gradient| <= tol or no step decreases it (stalled), so later
    iterations compute only the problems left. Returns the minimizers, each problem's final max |gradient|
    and its number of iterations.

    On a GPU the host waits for the device once per iteration: the unit step's acceptance and the
    convergence at the new point come back in one copy; only problems that must backtrack cost more.
    """
    g_count, device = len(start), start.device
    x_out, grad_out, iterations = start.clone(), start.new_full((g_count,), float("inf")), [0] * g_count
    ids, x = list(range(g_count)), start.clone()
    f, g = value_and_grad(x, ids)
    grad_max = _max_abs(g)
    finished = (grad_max <= tol).tolist()
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, 1 / s.y) per update
    gamma = torch.ones_like(f)
    for iteration in range(max_iter + 1):
        if iteration == max_iter:
            finished = [True] * len(ids)
        if any(finished):  # retire finished problems from the batch
            out = index_on([i for i, stop in enumerate(finished) if stop], device)
            out_ids = index_on([p for p, stop in zip(ids, finished) if stop], device)
            x_out[out_ids], grad_out[out_ids] = x[out], grad_max[out]
            keep_list = [i for i, stop in enumerate(finished) if not stop]
            if not keep_list:
                break
            keep = index_on(keep_list, device)
            ids = [ids[i] for i in keep_list]
            x, f, g, grad_max, gamma = x[keep], f[keep], g[keep], grad_max[keep], gamma[keep]
            pairs = [(s[keep], y[keep], rho[keep]) for s, y, rho in pairs]
        for p in ids:
            iterations[p] += 1
        direction, slope = _lbfgs_direction(g, pairs, gamma, lambda v: precondition(v, ids))

        # The unit step first: with the preconditioner it is usually accepted.
        step = torch.ones_like(f)
        f_new, g_new = value_and_grad(x + direction, ids)
        grad_max_new = _max_abs(g_new)
        accepted, finished = torch.stack(
            [_acceptable(f, slope, step, f_new, g_new, direction), grad_max_new <= tol]).tolist()
        pending = [i for i, ok in enumerate(accepted) if not ok]
        for _ in range(max_halvings - 1):
            if not pending:
                break
            at = index_on(pending, device)
            step[at] /= 2
            f_at, g_at = value_and_grad(x[at] + step[at, None] * direction[at], [ids[i] for i in pending])
            f_new[at], g_new[at], grad_max_new[at] = f_at, g_at, _max_abs(g_at)
            ok = _acceptable(f[at], slope[at], step[at], f_at, g_at, direction[at])
            for i, (ok_i, small) in zip(pending, torch.stack([ok, grad_max_new[at] <= tol]).T.tolist()):
                accepted[i], finished[i] = ok_i, small
            pending = [i for i in pending if not accepted[i]]
        if pending:  # no descent step found: these stay put and leave the batch
            at = index_on(pending, device)
            step[at], f_new[at], g_new[at], grad_max_new[at] = 0.0, f[at], g[at], grad_max[at]
            for i in pending:
                finished[i] = True
        s = step[:, None] * direction
        y = g_new - g
        sy = (s * y).sum(dim=1)
        keep_pair = sy > 1e-10 * (s.norm(dim=1) * y.norm(dim=1))  # curvature condition, else skip this pair
        y_h_y = (y * precondition(y, ids)).sum(dim=1)
        gamma = torch.where(keep_pair & (y_h_y > 0), sy / y_h_y.clamp_min(torch.finfo(sy.dtype).tiny), gamma)
        x, f, g, grad_max = x + s, f_new, g_new, grad_max_new
        pairs.append((s.mul_(keep_pair[:, None]), y.mul_(keep_pair[:, None]), torch.where(keep_pair, 1.0 / sy, 0.0)))
        pairs = pairs[-history:]
    return x_out, grad_out, iterations


def _lbfgs_direction(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     gamma: torch.Tensor, precondition: Callable[[torch.Tensor], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-loop recursion's direction -H g per problem and its slope g.d (restarted along -g where it
    is not a descent direction), updated in place to spare memory traffic over the [m, P] vectors."""
    q, alphas = g.clone(), []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s * q).sum(dim=1)
        q.addcmul_(y, alpha[:, None], value=-1.0)
        alphas.append(alpha)
    q = precondition(q).mul_(gamma[:, None])
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q.addcmul_(s, (alpha - rho * (y * q).sum(dim=1))[:, None])
    direction = q.neg_()
    slope = (g * direction).sum(dim=1)
    uphill = slope >= 0  # lost curvature information: restart along the gradient
    return torch.where(uphill[:, None], -g, direction), torch.where(uphill, -(g * g).sum(dim=1), slope)


def index_on(values: list[int], device: torch.device) -> torch.Tensor:
    """An index tensor on ``device``; to a GPU it goes from pinned memory, so the host does not wait for the
    device's queued work (as a plain copy would)."""
    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host


def _max_abs(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(g, ord=float("inf"), dim=1)


def _acceptable(f: torch.Tensor, slope: torch.Tensor, step: torch.Tensor, f_at: torch.Tensor, g_at: torch.Tensor,
                direction: torch.Tensor) -> torch.Tensor:
    """Armijo's sufficient decrease, or the approximate Wolfe condition (for changes below rounding)."""
    armijo = f_at <= f + 1e-4 * step * slope
    approximate_wolfe = (f_at <= f + 1e-6 * f.abs()) & ((g_at * direction).sum(dim=1) <= -(1 - 2e-4) * slope)
    return armijo | approximate_wolfe
