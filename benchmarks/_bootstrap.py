"""First import of the detection benchmarks' scripts (benchmarks/skab/{run,sweep,diagnose}.py, benchmarks/asd/run.py).

One thread for OpenMP, MKL and OpenBLAS unless the environment says otherwise: set here, before numpy or
torch is imported, since they read these variables once, when they load. A script finds this module by
putting the repository first on `sys.path` (so this checkout's `benchmarks` and `detector` win over an
installed copy) and then importing it, ahead of every other import:

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import benchmarks._bootstrap  # noqa: F401

    # isort: split

(standard-library imports may come before it; `# isort: split` keeps an import sorter from moving numpy
or torch above it).
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

for _var in THREAD_VARIABLES:
    os.environ.setdefault(_var, "1")
