"""The best weights for a fixed mask: ADMM (Boza 2024, arXiv 2401.02938) then conjugate gradients.

Given a layer's weight W (out, in), its inputs' Hessian H = X^T X / tokens (in, in) and a mask,
find W' with W' = 0 where the mask removes and the least output error tr((W' - W) H (W' - W)^T).
OBS (``methods.obs``) gets there in one left-to-right sweep that never revisits a column, so its
answer is good, not optimal for the mask; this solves the problem itself:

  ADMM, splitting W' = Z with Z in the mask's set, penalty rho growing geometrically:
      V = (W H + rho (Z - U)) (H + rho I)^-1      one Cholesky solve of (in, in) per iteration
      Z = mask(V + U)                             zero the removed weights
      U = U + V - Z
  then conjugate gradients on the masked normal equations (every row at once, Jacobi
  preconditioner), starting from Z, which only lowers the error (CG descends the objective).

H is normalised by its mean diagonal and damped by ``percdamp`` as OBS damps it, so both solve the
same problem. Float32 math except the factorisations (float64). ``iters=0`` and ``cg_iters=0``
return the plainly masked weight.

``remask`` makes the mask move with the weights (Boza's gradual pruning): at iteration k it is
chosen again from the current iterate V + U, at a sparsity that grows to the target, so weights
the update makes small can still be removed and those it makes large kept. The last mask it
returns is the one CG polishes.
"""
from __future__ import annotations

from typing import Callable

import torch


def _normalised(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    h = hessian.double()
    dead = torch.diag(h) == 0  # inputs that were always zero carry no information
    h = h.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx[dead], idx[dead]] = 1.0
    h = h / torch.diag(h).mean()
    h[idx, idx] += percdamp
    return h  # (in, in) float64, mean diagonal 1 + percdamp


def output_error(weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((new - weight) H (new - weight)^T): the layer's squared output error on the calibration inputs."""
    delta = (new - weight).double()
    return float(((delta @ hessian.double()) * delta).sum())


@torch.no_grad()
def admm_update(weight: torch.Tensor, hessian: torch.Tensor, mask: torch.Tensor, *, iters: int = 20,
                rho: float = 0.1, rho_growth: float = 1.3, cg_iters: int = 10, percdamp: float = 0.01,
                remask: Callable[[torch.Tensor, int], torch.Tensor | None] | None = None) -> torch.Tensor:
    """weight (out, in), hessian (in, in), mask (out, in) True = removed -> updated weight (out, in)
    with exact zeros where removed. ``remask(iterate (out, in), k)`` -> the mask from iteration k on,
    or None to keep the last one (``mask`` is then the mask before the first iteration)."""
    keep = (~mask).to(weight.dtype)  # (out, in)
    w = weight.float()
    z = w * keep
    if iters <= 0 and cg_iters <= 0:
        return z
    h = _normalised(hessian.to(w.device), percdamp)  # (in, in) float64
    wh = (w.double() @ h).float()  # (out, in): the right-hand side's fixed part
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    u = torch.zeros_like(w)
    for k in range(iters):
        r = rho * rho_growth**k
        chol = torch.linalg.cholesky(h + r * eye)  # (in, in) lower
        rhs = (wh + r * (z - u)).double()  # (out, in)
        v = torch.cholesky_solve(rhs.t(), chol).t().float()  # (H + rI) symmetric: V = rhs (H + rI)^-1
        moved = remask(v + u, k) if remask is not None else None
        if moved is not None:
            keep = (~moved).to(w.dtype)
        z = (v + u) * keep
        u = u + v - z
    return _masked_cg(z, wh, h.float(), keep, cg_iters)


def _masked_cg(z: torch.Tensor, wh: torch.Tensor, h: torch.Tensor, keep: torch.Tensor, iters: int) -> torch.Tensor:
    """Minimise tr((V - W) H (V - W)^T) over V with V = 0 off `keep`, from V = z, every row at once:
    preconditioned conjugate gradients on keep * (V H) = keep * (W H)."""
    if iters <= 0:
        return z
    precond = 1.0 / torch.diag(h).clamp_min(1e-12)  # (in,) Jacobi
    v = z.clone()
    r = (wh - v @ h) * keep  # (out, in) residual = minus the gradient
    y = r * precond
    p = y.clone()
    ry = (r * y).sum(1, keepdim=True)  # (out, 1): each row is its own problem
    for _ in range(iters):
        hp = (p @ h) * keep
        alpha = ry / (p * hp).sum(1, keepdim=True).clamp_min(1e-30)
        v = v + alpha * p
        r = r - alpha * hp
        y = r * precond
        ry_new = (r * y).sum(1, keepdim=True)
        p = y + (ry_new / ry.clamp_min(1e-30)) * p
        ry = ry_new
    return v * keep
