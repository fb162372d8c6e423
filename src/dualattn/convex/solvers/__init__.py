"""Solvers for convex-head programs: FISTA (PyTorch, CPU/GPU) and a CVXPY reference."""

from dualattn.convex.solvers.cvxpy_ref import solve_cvxpy
from dualattn.convex.solvers.fista import fista
from dualattn.convex.solvers.result import SolveResult, certificate

__all__ = ["fista", "solve_cvxpy", "SolveResult", "certificate"]
