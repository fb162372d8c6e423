"""Width sweep of the convex solvers (time to a certified gap vs d): thin wrapper of
``dualattn.convex.width_bench``.  Usage: ``python benchmarks/convex_width.py [--quick] [OUT_DIR]``."""

import sys

from dualattn.convex.width_bench import default_cases, run_sweep

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    run_sweep(default_cases(quick="--quick" in sys.argv), args[0] if args else "benchmarks/results")
