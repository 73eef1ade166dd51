"""pyproject.toml and environment.yml must pin the same packages.

pyproject.toml is the source of truth (``make`` installs from it);
environment.yml is what conda users and Binder build from. Both pin exact
versions, and the pins must agree both ways: the same set of packages, each at
the same version. The installed environment must also match the pins.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

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
        if name in pins:
            assert pins[name] == version, (
                f"{where}: {name} pinned twice, to {pins[name]} and {version}"
            )
        pins[name] = version
    return pins


def load_pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_pins() -> dict[str, str]:
    project = load_pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    return parse_pins(requirements, "pyproject.toml")


def load_environment() -> dict:
    with open(ROOT / "environment.yml", encoding="utf8") as f:
        return yaml.safe_load(f)


def environment_pip_section() -> list[str]:
    sections = [d["pip"] for d in load_environment()["dependencies"] if isinstance(d, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one `pip:` section"
    return [str(item) for item in sections[0]]


def environment_pins() -> dict[str, str]:
    requirements = [r for r in environment_pip_section() if not r.startswith("-")]
    return parse_pins(requirements, "environment.yml")


def test_pyproject_pins_everything_exactly():
    pins = pyproject_pins()
    for required in ("torch", "torchvision", "jupyter-book", "papermill", "nbval",
                     "curvlinops-for-pytorch"):
        assert required in pins, f"pyproject.toml does not pin {required}"
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"


def assert_pins_contained(pins, name, others, other_name):
    """Every pin of ``name`` is in ``other_name`` with the same version."""
    for package, version in pins.items():
        assert package in others, f"{package}=={version} is in {name} but not in {other_name}"
        assert others[package] == version, (
            f"{package}: {name} pins {version}, {other_name} pins {others[package]}"
        )


def test_every_pyproject_pin_is_in_environment_yml():
    assert_pins_contained(pyproject_pins(), "pyproject.toml", environment_pins(), "environment.yml")


def test_every_environment_yml_pin_is_in_pyproject():
    assert_pins_contained(environment_pins(), "environment.yml", pyproject_pins(), "pyproject.toml")


def test_environment_yml_python_and_local_package():
    deps = load_environment()["dependencies"]
    plain = [d for d in deps if isinstance(d, str)]
    pythons = [d for d in plain if d.split("=")[0].strip() == "python"]
    assert len(pythons) == 1, "environment.yml must pin python once"
    conda_python = pythons[0].split("=", 1)[1].lstrip("=").strip()
    requires = load_pyproject()["project"]["requires-python"]
    minimum = re.match(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum, f"unexpected requires-python {requires!r}"
    major, minor = (int(x) for x in conda_python.split(".")[:2])
    assert (major, minor) >= (int(minimum.group(1)), int(minimum.group(2))), (
        f"environment.yml's python={conda_python} does not satisfy requires-python {requires}"
    )
    assert "pip" in plain, "environment.yml must install pip"
    assert "-e ." in environment_pip_section(), "environment.yml must install the book's lib (-e .)"


@pytest.mark.parametrize("name", sorted(pyproject_pins()))
def test_installed_versions_match_the_pins(name):
    wanted = pyproject_pins()[name]
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is pinned but not installed; run `make test` (it reinstalls)")
    installed = installed.split("+")[0]  # a local build tag (2.14.1+cpu) is the same release
    assert installed == wanted, (
        f"{name} {installed} is installed but {wanted} is pinned; run `make install`"
    )
