"""What the install, platform and README claims rest on: the package imports without fcntl
(Windows), its locks work through msvcrt there, chain workers that cannot start say so, and
the packaging metadata and the README's command table say what the code does."""

import errno
import os
import pkgutil
import subprocess
import sys
import textwrap
import tomllib
import types

import pytest

import llcgrok
from llcgrok import filelock, runs


def test_every_module_imports_without_fcntl(repo_root):
    modules = sorted(m.name for m in pkgutil.walk_packages(llcgrok.__path__, "llcgrok.") if not m.name.endswith("__main__"))
    assert {"llcgrok.runs", "llcgrok.sweep", "llcgrok.cli", "llcgrok.filelock"} <= set(modules)
    script = textwrap.dedent(f"""
        import importlib, sys
        sys.modules["fcntl"] = None  # what Windows has: importing it raises ImportError
        for name in {modules!r}:
            importlib.import_module(name)
        print("imported", len({modules!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout


def _fake_msvcrt():
    """msvcrt.locking's contract: one holder per file and byte, any other handle is refused."""
    holders = {}

    def locking(fd, mode, nbytes):
        assert nbytes == 1 and os.lseek(fd, 0, os.SEEK_CUR) == 0
        key = os.fstat(fd).st_ino
        if mode == fake.LK_UNLCK:
            assert holders.pop(key) == fd
        elif holders.setdefault(key, fd) != fd:
            raise OSError(errno.EACCES, "Permission denied")

    fake = types.SimpleNamespace(LK_UNLCK=0, LK_LOCK=1, LK_NBLCK=2, LK_RLCK=3, LK_NBRLCK=4, locking=locking)
    return fake, holders


def test_directory_lock_through_msvcrt(tmp_path, monkeypatch):
    fake, holders = _fake_msvcrt()
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    with runs.directory_lock(tmp_path):
        assert len(holders) == 1
        with pytest.raises(runs.LockedError, match="in use by"):
            with runs.directory_lock(tmp_path):
                pass
    assert not holders  # released
    with runs.directory_lock(tmp_path):  # and taken again
        pass


def test_no_locking_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    with open(tmp_path / "f", "w") as handle, pytest.raises(OSError, match="no file locking"):
        filelock.lock(handle.fileno(), blocking=False)


@pytest.mark.slow
def test_chain_workers_fall_back_to_one_process_for_a_script_on_stdin(tmp_path):
    """``python - <<EOF`` with cores=2: spawned workers cannot re-run '<stdin>'; the chains run
    in this process, with a warning that says why and what to do, instead of a dead pool."""
    script = textwrap.dedent("""
        import torch
        from llcgrok.llc import estimate_llc

        torch.manual_seed(0)
        x = torch.randn(200, 3)
        y = x @ torch.randn(3, 1)
        model = torch.nn.Linear(3, 1)
        one = estimate_llc(model, (x, y), loss="mse", epsilon=1e-4, nbeta=10.0, localization=100.0, num_chains=2,
                           num_draws=5, batch_size=50, cores=1, quiet=True, seed=3, sampler="devinterp")
        # devinterp's loop is the path that runs chains in worker processes
        two = estimate_llc(model, (x, y), loss="mse", epsilon=1e-4, nbeta=10.0, localization=100.0, num_chains=2,
                           num_draws=5, batch_size=50, cores=2, quiet=True, seed=3, sampler="devinterp")
        print("same", one.mean == two.mean)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same True" in done.stdout
    assert "cannot re-run the main module '<stdin>'" in done.stderr and "if __name__ == '__main__'" in done.stderr
    assert "died" not in done.stderr


def test_packaging_metadata_matches_the_readme(repo_root):
    meta = tomllib.loads((repo_root / "pyproject.toml").read_text())
    project, build = meta["project"], meta["build-system"]
    assert project["requires-python"] == ">=3.11"
    assert "Python 3.11+" in (repo_root / "README.md").read_text()
    assert sys.version_info >= (3, 11)
    assert project["license"] == "MIT"  # an SPDX expression (PEP 639), not the deprecated table
    assert any(d.replace(" ", "").startswith("torch>=2.4") for d in project["dependencies"])  # fused AdamW on the CPU
    (backend,) = [r for r in build["requires"] if r.startswith("setuptools")]
    assert ">=77" in backend and "<" in backend  # 77: license expressions; bounded above
    requirements = (repo_root / "requirements.txt").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in requirements
    # every data file the package reads goes into a wheel (and a pip install from a git URL)
    patterns = meta["tool"]["setuptools"]["package-data"]["llcgrok"]
    package = repo_root / "llcgrok"
    data = [f for f in package.rglob("*") if f.is_file() and f.suffix not in (".py", ".pyc")]
    assert all(any(f.relative_to(package).match(pattern) for pattern in patterns) for f in data), data


def test_readme_command_table_lists_every_flag(repo_root):
    from llcgrok.cli import build_parser

    rows = {line.split("`")[1].split()[1]: line for line in (repo_root / "README.md").read_text().splitlines()
            if line.startswith("| `llcgrok ")}
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    assert set(rows) == set(commands.choices)
    for name, sub in commands.choices.items():
        flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing = [f for f in flags if f not in rows[name]]
        assert not missing, f"README's row for `llcgrok {name}` lacks {missing}"
