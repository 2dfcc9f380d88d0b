"""Where the package keeps what it can rebuild: `MLM_CACHE`, default ~/.cache/mlm.

Two things live there: the token blocks of a WikiText folder (mlm/data/blocks.py) and, on machines told to write no
bytecode, the compiled Python of a training command (`keep_bytecode`). This module imports nothing heavy: the
training command calls `keep_bytecode` before it imports torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def cache_folder() -> Path:
    return Path(os.environ.get("MLM_CACHE", Path.home() / ".cache" / "mlm"))


def has_bytecode(module: str) -> bool:
    """Whether `module` (not imported) has compiled bytecode beside its source, as pip leaves it at install."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.has_location or not spec.origin.endswith(".py"):
        return True  # nothing to compile: leave the interpreter alone
    return os.path.exists(importlib.util.cache_from_source(spec.origin))


def keep_bytecode(probe: str = "torch") -> Path | None:
    """Keep this process's compiled imports under the cache where the interpreter would neither find nor write them.

    Container images often set PYTHONDONTWRITEBYTECODE=1 (the GPU machines of issue 12 do, and ship torch without
    `__pycache__`), and then every `python -m mlm.train` compiles torch's Python from source: `import torch` took
    2.8-4.1 s of a 4.6-6.3 s start-up on an H200 host, against 1.3-1.8 s from bytecode. Only there (the flag is set,
    no PYTHONPYCACHEPREFIX is given, and `probe` has no bytecode beside its source) this turns writing on under
    `sys.pycache_prefix`: a parallel tree in the cache, so nothing is written beside the installed sources (what the
    flag is usually there to prevent) and every command after the first imports from bytecode. Python checks each
    file's source size and time stamp, so an upgraded package is compiled again. Returns the folder, or None if
    nothing changed. Must run before the imports it should speed up.
    """
    if not sys.dont_write_bytecode or sys.pycache_prefix is not None or has_bytecode(probe):
        return None
    folder = cache_folder() / "pycache"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False
    return folder
