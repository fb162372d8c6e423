"""Width sweep of the convex solvers (time to a certified gap vs d): thin wrapper of
``dualattn.convex.width_bench``.

Usage: ``python benchmarks/convex_width.py [--quick] [--only=d64sq,d16,d32] [OUT_DIR]``
(``--only`` selects cases by tag ``d<d>`` / ``d<d>sq`` / ``d<d>c<c>``, written to
``OUT_DIR/convex_width_<tags>.csv``)."""

import sys

from dualattn.convex.width_bench import default_cases, run_sweep



def _tags(case):
    base = f"d{case.d}"
    loss = ("sqrandn" if case.targets == "randn" else "sq") if case.loss == "squared" else "ce"
    return {f"{base}{loss}", f"{base}c{case.c}"} | ({base} if loss != "sqrandn" else set())


if __name__ == "__main__":
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--only=")), None)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cases = default_cases(quick="--quick" in sys.argv)
    name = "convex_width"
    if only:
        cases = [c for c in cases if _tags(c) & set(only)]
        name += "_" + "_".join(only)
    run_sweep(cases, args[0] if args else "benchmarks/results", name=name)
