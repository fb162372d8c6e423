"""Attention forward+backward time and peak memory vs sequence length.

    python benchmarks/attention_speed.py [--seq-lens 512,1024] [--methods sdpa,sh] \
        [--device cpu|cuda|auto] [--repeats 5] [--out benchmarks/results] [--quick]

Same code as ``dualattn bench attention`` (``dualattn.bench.cli.attention``);
writes ``attention_speed.csv``, ``attention_speed_{time,memory}.png`` and
``attention_speed.md`` to ``--out`` and prints a table and PASS/FAIL per target.
"""

import typer

from dualattn.bench.cli import attention

if __name__ == "__main__":
    typer.run(attention)
