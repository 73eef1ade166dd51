"""Where data and caches go (lib.book.paths): the clone's data/, $BOOK_DATA, or a user cache
folder for an installed package, never inside site-packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.book import paths

ROOT = Path(__file__).resolve().parent.parent


def test_a_clone_uses_its_data_folder(monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    assert paths.in_clone()
    assert paths.data_root() == ROOT / "data"
    assert paths.resolve_root("checkpoints") == ROOT / "data" / "checkpoints"
    assert paths.resolve_root(None) == ROOT / "data"
    assert paths.resolve_root("/tmp/x") == Path("/tmp/x")


def test_the_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.data_root() == tmp_path
    assert paths.resolve_root("populations") == tmp_path / "populations"
    monkeypatch.setenv(paths.DATA_ENV, "relative/folder")
    with pytest.raises(ValueError, match="BOOK_DATA must be an absolute path"):
        paths.data_root()


def test_user_cache_dir_follows_xdg(monkeypatch, tmp_path):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG_CACHE_HOME is a Linux convention")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.user_cache_dir() == tmp_path / "parameter-space-geometry"
    monkeypatch.setenv("XDG_CACHE_HOME", "not/absolute")  # ignored, as the spec says
    assert paths.user_cache_dir() == Path.home() / ".cache" / "parameter-space-geometry"


def test_bad_root():
    with pytest.raises(TypeError, match="root"):
        paths.resolve_root(3)


def _run_installed(target: Path, code: str, env: dict[str, str], cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter that imports ``lib`` from ``target``."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **env, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


PROBE = """
import json, lib, lib.book.paths
from lib.book.checkpoint import checkpoint_path
from lib.book.data import load_mnist1d
split = load_mnist1d()
print(json.dumps({"lib": lib.__file__, "root": str(lib.book.paths.data_root()),
                  "clone": lib.book.paths.in_clone(), "ckpt": str(checkpoint_path("run"))}))
"""


def test_an_installed_package_writes_to_the_user_cache(installed_lib, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    out = _run_installed(installed_lib, PROBE, {**env, paths.DATA_ENV: ""}, cwd=tmp_path)
    assert Path(out["lib"]).is_relative_to(installed_lib), "lib was not imported from the install"
    assert out["clone"] is False
    cache = tmp_path / "cache" / "parameter-space-geometry"
    assert out["root"] == str(cache)
    assert out["ckpt"] == str(cache / "checkpoints" / "run.pt")
    assert any(cache.glob("mnist1d_seed42_v*.npz")), "MNIST-1D was not cached in the user cache"
    written = [p for p in installed_lib.rglob("*") if p.suffix in (".npz", ".pt")]
    assert written == [], f"files written inside the installed package: {written}"


def test_an_installed_package_honours_book_data(installed_lib, tmp_path):
    out = _run_installed(installed_lib, PROBE, {paths.DATA_ENV: str(tmp_path / "mine")}, cwd=tmp_path)
    assert out["root"] == str(tmp_path / "mine")
    assert any((tmp_path / "mine").glob("mnist1d_seed42_v*.npz"))


def test_write_atomically_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "deep" / "cache.bin"
    assert paths.write_atomically(target, lambda f: f.write(b"first")) == target
    assert target.read_bytes() == b"first"

    def fail(f):
        f.write(b"half of a file")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        paths.write_atomically(target, fail)
    assert target.read_bytes() == b"first", "a failed write must leave the old file"
    assert [p.name for p in target.parent.iterdir()] == ["cache.bin"], "temporary file left"


def test_write_atomically_fsyncs_the_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = paths.os.fsync
    monkeypatch.setattr(paths.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    paths.write_atomically(tmp_path / "x.npz", lambda f: f.write(b"data"))
    assert len(synced) >= 1


@pytest.mark.parametrize("path, write", [(3, lambda f: None), ("x", "not callable")])
def test_write_atomically_rejects_bad_arguments(tmp_path, path, write):
    with pytest.raises(TypeError):
        paths.write_atomically(path, write)
