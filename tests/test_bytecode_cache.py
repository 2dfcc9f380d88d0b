"""On a machine told to write no bytecode (PYTHONDONTWRITEBYTECODE=1, as the lent GPU image), a training command keeps
its compiled imports in the package's cache and later commands import from there (issue 12, target 3a); anywhere
else it changes nothing. Each case runs in a fresh interpreter: the setting is the process's."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SOURCE = 'VALUE = "source"\n'
DECOY = 'VALUE = "cached"\n'  # the same length: only the bytecode tells which one a process imported


def python(code: str, tmp_path: Path, **env_changes: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.update(MLM_CACHE=str(tmp_path / "cache"), PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}", **env_changes)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def a_package_without_bytecode(tmp_path: Path) -> Path:
    package = tmp_path / "site" / "tinypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(SOURCE)
    return package


IMPORT_AFTER_KEEP = "from mlm.cache import keep_bytecode; print(keep_bytecode('tinypkg')); import tinypkg.mod as m; print(m.VALUE)"


def test_without_bytecode_the_first_process_fills_the_cache_and_the_next_imports_from_it(tmp_path):
    package = a_package_without_bytecode(tmp_path)
    folder, value = python(IMPORT_AFTER_KEEP, tmp_path, PYTHONDONTWRITEBYTECODE="1").splitlines()
    assert (folder, value) == (str(tmp_path / "cache" / "pycache"), "source")
    (cached,) = Path(folder).rglob("tinypkg/mod.*.pyc")
    assert cached.parent.parent == Path(folder + str(package.parent))  # a tree parallel to the sources'
    assert not (package / "__pycache__").exists()  # nothing written beside the installed sources

    # Swap the cached bytecode for a decoy's carrying mod.py's size and time stamp: a process that prints the
    # decoy's value read the cache instead of compiling mod.py.
    decoy = tmp_path / "decoy.py"
    decoy.write_text(DECOY)
    stat = (package / "mod.py").stat()
    os.utime(decoy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    py_compile.compile(str(decoy), cfile=str(cached), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    written = cached.stat().st_mtime_ns
    assert python(IMPORT_AFTER_KEEP, tmp_path, PYTHONDONTWRITEBYTECODE="1").splitlines()[1] == "cached"
    assert cached.stat().st_mtime_ns == written  # read, not written again

    # the source changes (an upgrade): Python compiles it again, into the same cache
    (package / "mod.py").write_text('VALUE = "upgraded"\n')
    assert python(IMPORT_AFTER_KEEP, tmp_path, PYTHONDONTWRITEBYTECODE="1").splitlines()[1] == "upgraded"


def test_nothing_changes_where_bytecode_is_written_found_or_placed_by_the_user(tmp_path):
    package = a_package_without_bytecode(tmp_path)
    report = "import sys; from mlm.cache import keep_bytecode; print(keep_bytecode('tinypkg'), sys.dont_write_bytecode)"
    # the interpreter writes bytecode anyway: beside the sources, as always
    assert python(report, tmp_path) == "None False"
    # the user chose a cache folder
    assert python(report, tmp_path, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(tmp_path / "mine")) == "None True"
    # the package ships its bytecode (pip compiles at install): reading it beats a cache of our own
    py_compile.compile(str(package / "mod.py"))
    py_compile.compile(str(package / "__init__.py"))
    assert python(report, tmp_path, PYTHONDONTWRITEBYTECODE="1") == "None True"
    assert not (tmp_path / "cache").exists()


def test_the_training_command_keeps_torch_s_bytecode_on_such_a_machine(tmp_path):
    # This environment's torch has its bytecode from pip; pretend it had none, as on the GPU image, and run the
    # command as `python -m mlm.train --help` does: torch must be compiled into the cache, so the call comes first.
    code = ("import sys, runpy, mlm.cache; mlm.cache.has_bytecode = lambda module: False; "
            "sys.argv = ['mlm.train', '--help']; runpy.run_module('mlm.train', run_name='__main__', alter_sys=True)")
    assert "--preset" in python(code, tmp_path, PYTHONDONTWRITEBYTECODE="1")
    cache = tmp_path / "cache" / "pycache"
    assert list(cache.rglob("torch/__init__.*.pyc")), "torch was imported before the cache was set up"
    assert list(cache.rglob("mlm/config.*.pyc"))
