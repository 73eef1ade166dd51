"""pyproject.toml, constraints.txt and environment.yml must agree.

- pyproject.toml declares compatible *ranges*, as a library does, so that the package
  installs next to other versions (Colab's torch);
- constraints.txt is the lock file: the exact versions the stored chapter outputs were
  made with, which ``make`` installs with (``pip install -c constraints.txt``);
- environment.yml (conda, Binder) pins every direct requirement at the locked version
  and installs with the same constraints.

The lock must satisfy every declared range, environment.yml must pin exactly the direct
requirements at the locked versions, and the installed environment must match the lock.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*$")


def normalize(name: str) -> str:
    """PEP 503 normalized project name (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(requirements: list[str], where: str) -> dict[str, str]:
    """Map normalized name -> version for a list of ``name==version`` strings."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        assert match, f"{where}: {requirement!r} is not an exact pin (name==version)"
        name, version = normalize(match.group(1)), match.group(2)
        assert name not in pins or pins[name] == version, (
            f"{where}: {name} pinned twice, to {pins[name]} and {version}")
        pins[name] = version
    return pins


def declared() -> dict[str, Requirement]:
    """Every requirement of pyproject.toml (dependencies and all extras), by name."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    return {normalize(Requirement(r).name): Requirement(r) for r in requirements}


def locked() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf8").splitlines()
    return parse_pins([l for l in lines if l.strip() and not l.lstrip().startswith("#")],
                      "constraints.txt")


def environment() -> dict:
    with open(ROOT / "environment.yml", encoding="utf8") as f:
        return yaml.safe_load(f)


def environment_pip_section() -> list[str]:
    sections = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one `pip:` section"
    return [str(item) for item in sections[0]]


def test_pyproject_declares_ranges_not_pins():
    for name, requirement in declared().items():
        assert requirement.specifier, f"pyproject.toml: {name} has no version range"
        assert not any(spec.operator == "==" for spec in requirement.specifier), (
            f"pyproject.toml pins {requirement}: declare a range there, pin in constraints.txt")


def test_the_lock_pins_every_requirement_inside_its_range():
    lock = locked()
    for name, requirement in declared().items():
        assert name in lock, f"{name} is a requirement but constraints.txt does not pin it"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"constraints.txt pins {name}=={lock[name]}, outside pyproject's range {requirement}")
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


def test_environment_yml_pins_the_direct_requirements_at_the_locked_versions():
    section = environment_pip_section()
    pins = parse_pins([r for r in section if not r.startswith("-")], "environment.yml")
    assert set(pins) == set(declared()), (
        f"environment.yml pins {sorted(set(pins) ^ set(declared()))} differently from "
        "pyproject.toml's requirements")
    lock = locked()
    for name, version in pins.items():
        assert version == lock[name], f"{name}: environment.yml pins {version}, the lock {lock[name]}"
    assert "-c constraints.txt" in section, "environment.yml must install with the lock"
    assert "-e ." in section, "environment.yml must install the book's lib (-e .)"


def test_environment_yml_python_satisfies_requires_python():
    plain = [d for d in environment()["dependencies"] if isinstance(d, str)]
    pythons = [d for d in plain if d.split("=")[0].strip() == "python"]
    assert len(pythons) == 1, "environment.yml must pin python once"
    version = pythons[0].split("=", 1)[1].lstrip("=").strip()
    with open(ROOT / "pyproject.toml", "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(version + ".0")
    assert "pip" in plain, "environment.yml must install pip"


@pytest.mark.parametrize("name", sorted(declared()))
def test_installed_versions_match_the_lock(name):
    wanted = locked()[name]
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        extras = {"jupyterlab", "jupyterlab-myst"}  # the `lab` extra, installed by `make lab`
        if name in extras:
            pytest.skip(f"{name} belongs to the lab extra, which `make test` does not install")
        pytest.fail(f"{name} is required but not installed; run `make install`")
    installed = installed.split("+")[0]  # a local build tag (2.14.1+cpu) is the same release
    assert installed == wanted, f"{name} {installed} is installed but {wanted} is locked; run `make install`"
