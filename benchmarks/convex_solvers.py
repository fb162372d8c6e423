"""Convex-solver benchmark (time to a certified relative gap of 1e-4): a thin script over
:mod:`dualattn.bench.convex`, which also backs ``dualattn convex bench``.

    python benchmarks/convex_solvers.py            # full run (tens of minutes)
    python benchmarks/convex_solvers.py --quick    # tiny sizes, seconds

Results go to ``benchmarks/results/`` next to this script unless ``--out`` is given.
"""

import sys
from pathlib import Path

from dualattn.bench.convex import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/convex_solvers.py", default_out=Path(__file__).resolve().parent / "results"))
