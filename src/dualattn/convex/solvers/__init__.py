"""Solvers for convex-head programs: FISTA (PyTorch, CPU/GPU), matrix-free factorised (Burer-Monteiro),
ADMM (squared loss), augmented Lagrangian (cone constraints), CVXPY reference."""

from dualattn.convex.solvers.admm import admm
from dualattn.convex.solvers.auglag import augmented_lagrangian
from dualattn.convex.solvers.cvxpy_ref import solve_cvxpy
from dualattn.convex.solvers.factorised import factorised
from dualattn.convex.solvers.fista import fista
from dualattn.convex.solvers.result import SolveResult, certificate

__all__ = ["admm", "augmented_lagrangian", "factorised", "fista", "solve_cvxpy", "SolveResult", "certificate"]
