"""Where the package keeps what it can rebuild: `MLM_CACHE`, default ~/.cache/mlm.

The token blocks of every corpus live there (mlm/data/blocks.py). Bytecode is not the package's business: where an
image writes none, the launcher can point PYTHONPYCACHEPREFIX into this folder (benchmarks/README.md, "Start-up on
images that write no bytecode").
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder() -> Path:
    return Path(os.environ.get("MLM_CACHE", Path.home() / ".cache" / "mlm"))
