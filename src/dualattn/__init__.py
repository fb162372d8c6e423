"""dualattn: primal-dual attention layers and convex attention heads.

Subpackages
-----------
functional  pure attention functions on (B, H, N, D) tensors (reference + fast path)
nn          modules: Attention, encoder blocks, models
convex      convex attention heads: programs, solvers, certificates, recovery
data        datasets and generators (UEA, ListOps, Pathfinder, digits)
train       training loop, metrics, configs
bench       efficiency benchmarks
report      tables and plots
"""

__version__ = "0.1.0"
