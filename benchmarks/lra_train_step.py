"""Training-step time and peak memory of the LRA models per attention variant (CSV + markdown).

Same as ``dualattn bench train-step``; e.g.
    python benchmarks/lra_train_step.py --fractions 0.25,0.5,1 --batch 1 --out benchmarks/results/lra-train-step
"""

import typer

from dualattn.bench.train_step_cli import train_step

if __name__ == "__main__":
    typer.run(train_step)
