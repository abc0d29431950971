"""The committed locks install what pyproject.toml asks for: every direct requirement
(with the test and sweep extras) is locked exactly, with hashes, at a version its
range allows — so a range moved without `tools/update-locks` fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomlkit
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def locked(name: str) -> dict[str, str]:
    """name → version, refusing any entry that is not an exact, hashed pin."""
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    pins: dict[str, str] = {}
    for number, line in enumerate(lines):
        if not line or line.startswith((" ", "#")):
            continue
        match = PIN.match(line)
        assert match, f"{name}:{number + 1}: not an exact pin: {line!r}"
        assert (
            lines[number + 1].strip().startswith("--hash=sha256:")
        ), f"{name}:{number + 1}: {match[1]} has no hash"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def requirements(*extras: str) -> list[Requirement]:
    project = tomlkit.parse((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [
            Requirement(r)
            for r in project["optional-dependencies"][extra]
            if not r.startswith("atom-ckfree")
        ]
    build = tomlkit.parse((ROOT / "pyproject.toml").read_text())["build-system"]
    return wanted + [Requirement(r) for r in build["requires"]]


@pytest.mark.parametrize(
    "lock, extras", [("test.lock", ("sweep", "test")), ("run.lock", ())]
)
def test_every_requirement_is_locked_within_its_range(lock, extras):
    pins = locked(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/{lock}"
        assert requirement.specifier.contains(
            pins[name], prereleases=True
        ), f"requirements/{lock} has {name}=={pins[name]}, outside {requirement}"


def test_the_run_lock_agrees_with_the_test_lock():
    test = locked("test.lock")
    for name, version in locked("run.lock").items():
        assert (
            test.get(name) == version
        ), f"{name}: run {version}, test {test.get(name)}"
