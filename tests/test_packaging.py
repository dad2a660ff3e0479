"""conf/ ships inside the wheel as memexp.conf and every subpackage is listed in pyproject."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_every_subpackage_is_listed() -> None:
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(REPO_ROOT).parts)
        for top in ("memexp", "hydra_plugins")  # hydra_plugins: the batched launcher's Hydra plugin shim
        for path in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert found | {"memexp.conf"} == listed


def test_wheel_ships_the_configs_and_a_non_editable_install_finds_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("memexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name for name in names if name.startswith("memexp/conf/") and name.endswith(".yaml")}
    in_repo = {"memexp/conf/" + str(p.relative_to(REPO_ROOT / "conf")) for p in (REPO_ROOT / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = "import memexp.train as t; print(t.config_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(target / "memexp" / "conf")
    job = subprocess.run(
        [sys.executable, "-m", "memexp.cli", "train", "--cfg", "job", "optimizer=adamw"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr
    assert "name: adamw" in job.stdout
