"""The learning-rate / k / L selection behind ``benchmarks/accuracy.py``'s defaults.

One run per setting on mnist1d-mlp at the 2 % budget, 800 steps, with seed 100 (a seed the
benchmark itself does not use), printing one JSON line per run. Each method's learning rate was
then set to the best value of its grid.

Usage::

    python benchmarks/accuracy_sweep.py mcnc     # MCNC lr grid, then k and L at lr 0.05
    python benchmarks/accuracy_sweep.py mcncr    # MCNC r=8 lr grid, and L=1
    python benchmarks/accuracy_sweep.py base     # PRANC and NOLA lr grids
    python benchmarks/accuracy_sweep.py kl       # more k/L points; PRANC lr 0.3, NOLA lr 0.1
    python benchmarks/accuracy_sweep.py diag mnist1d-cnn   # why MCNC trails: 3x steps, width 256, L=1

``diag`` runs at seed 0 (a benchmark seed: it probes the benchmark's own runs) and 2 % budget.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.accuracy as A

GRIDS = {
    "mcnc": [("MCNC", lr, 8, 10.0) for lr in (0.02, 0.05, 0.1)]
    + [("MCNC", 0.05, k, b) for k, b in ((4, 10.0), (16, 10.0), (8, 1.0), (8, 5.0))],
    "mcncr": [("MCNC r=8", lr, 8, 10.0) for lr in (0.02, 0.05, 0.1)] + [("MCNC r=8", 0.05, 8, 1.0)],
    "base": [(m, lr, None, None) for m in ("PRANC", "NOLA") for lr in (3e-3, 1e-2, 3e-2, 0.1)],
    "kl": [("MCNC", 0.05, k, b) for k, b in ((4, 10.0), (16, 10.0), (8, 1.0), (4, 1.0))]
    + [("PRANC", 0.3, None, None), ("NOLA", 0.1, None, None)],
}
# (method, lr, k, L, generator width, steps)
DIAG = [
    ("MCNC", 0.05, 8, 10.0, 64, 2400),
    ("MCNC r=8", 0.1, 8, 10.0, 64, 2400),
    ("PRANC", 0.03, None, None, None, 2400),
    ("NOLA", 0.01, None, None, None, 2400),
    ("MCNC", 0.05, 8, 10.0, 256, 800),
    ("MCNC r=8", 0.1, 8, 10.0, 256, 800),
    ("MCNC", 0.05, 8, 1.0, 64, 800),
    ("MCNC r=8", 0.1, 8, 1.0, 64, 800),
]


def main() -> int:
    torch.set_num_threads(1)
    which = sys.argv[1]
    task = sys.argv[2] if len(sys.argv) > 2 else "mnist1d-mlp"
    data = A.TASKS[task][0]()
    if which == "diag":
        for method, lr, k, bound, width, steps in DIAG:
            if k is not None:
                A.MCNC_K, A.MCNC_BOUND, A.MCNC_WIDTH = k, bound, width
            r = A.run_one(task, method, 0.02, 0, data, steps, {method: lr})
            row = {"task": task, "method": method, "lr": lr, "L": bound, "width": width, "steps": steps}
            print(json.dumps({**row, "acc": r["acc"], "bytes": r["stored_bytes"]}), flush=True)
        return 0
    for method, lr, k, bound in GRIDS[which]:
        if k is not None:
            A.MCNC_K, A.MCNC_BOUND = k, bound
        r = A.run_one(task, method, 0.02, 100, data, 800, {method: lr})
        row = {"method": method, "lr": lr, "k": k, "L": bound, "acc": r["acc"], "bytes": r["stored_bytes"]}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
