"""The manifest of the upstream project (``patches/project.toml``): its URL, the bases
the series are written against, how to recognise its work tree, branch names, the
commit title and the test command. The engine reads every project-specific value
from here."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError

from .errors import SeriesError, UserError

MANIFEST = "project.toml"

# section -> key -> type; every key is required, none other is allowed
_SCHEMA: dict[str, dict[str, type]] = {
    "upstream": {"name": str, "url": str, "branch": str},
    "tree": {"package": str, "markers": list},
    "branches": {"checkout": str, "export_prefix": str, "commit_title": str},
    "tests": {"command": list, "paths": list, "runner": str, "runner_report_env": str},
    "lint": {"select": list},
}
_BASE = {"name": str, "commit": str, "date": str, "note": str}


@dataclass(frozen=True)
class Base:
    name: str
    commit: str
    date: str  # the commit's committer date (ISO 8601)
    note: str


@dataclass(frozen=True)
class Project:
    name: str
    url: str
    branch: str
    bases: tuple[Base, ...]
    package: str
    markers: tuple[str, ...]
    checkout_branch: str
    export_prefix: str
    commit_title: str
    test_command: tuple[str, ...]
    test_paths: tuple[str, ...]
    test_runner: str  # upstream's own script, where a commit has it
    test_runner_report_env: str  # where that script is told to write its JUnit report
    lint_select: tuple[
        str, ...
    ]  # ruff's rules where the tree has no ruff configuration
    companions: dict[str, str]

    @property
    def pin(self) -> str:
        """The default base's commit."""
        return self.bases[0].commit

    @property
    def pin_date(self) -> str:
        return self.bases[0].date

    def base(self, name: str) -> Base | None:
        return next((b for b in self.bases if b.name == name), None)

    def title(self, number: int, total: int, title: str) -> str:
        return self.commit_title.format(number=number, total=total, title=title)


def _checked(where: str, table: Any, schema: dict[str, type], path: Path) -> dict:
    if not isinstance(table, dict):
        raise SeriesError(f"{path}: [{where}] must be a table")
    unknown = sorted(set(table) - set(schema))
    missing = sorted(set(schema) - set(table))
    if unknown or missing:
        raise SeriesError(
            f"{path}: [{where}] "
            + "; ".join(
                part
                for part in (
                    f"unknown keys {unknown}" if unknown else "",
                    f"missing keys {missing}" if missing else "",
                )
                if part
            )
        )
    for key, kind in schema.items():
        if not isinstance(table[key], kind):
            raise SeriesError(
                f"{path}: [{where}] {key} must be a {kind.__name__}, "
                f"not {type(table[key]).__name__}"
            )
    return table


def load(patches: Path) -> Project:
    """The manifest in the ``patches/`` folder, checked against its schema."""
    path = patches / MANIFEST
    try:
        data = tomlkit.parse(path.read_text()).unwrap()
    except OSError as error:
        raise SeriesError(
            f"{path}: cannot read the project manifest ({error.strerror})"
        )
    except ParseError as error:
        raise SeriesError(f"{path}:{error.line}: {error}") from error
    extra = sorted(set(data) - set(_SCHEMA) - {"bases", "companions"})
    if extra:
        raise SeriesError(f"{path}: unknown sections {extra}")
    sections = {
        name: _checked(name, data.get(name), schema, path)
        for name, schema in _SCHEMA.items()
    }
    bases = data.get("bases")
    if not isinstance(bases, list) or not bases:
        raise SeriesError(f"{path}: at least one [[bases]] entry is needed")
    return Project(
        name=sections["upstream"]["name"],
        url=sections["upstream"]["url"],
        branch=sections["upstream"]["branch"],
        bases=tuple(
            Base(**_checked(f"bases #{i + 1}", b, _BASE, path))
            for i, b in enumerate(bases)
        ),
        package=sections["tree"]["package"],
        markers=tuple(sections["tree"]["markers"]),
        checkout_branch=sections["branches"]["checkout"],
        export_prefix=sections["branches"]["export_prefix"],
        commit_title=sections["branches"]["commit_title"],
        test_command=tuple(sections["tests"]["command"]),
        test_paths=tuple(sections["tests"]["paths"]),
        test_runner=sections["tests"]["runner"],
        test_runner_report_env=sections["tests"]["runner_report_env"],
        lint_select=tuple(sections["lint"]["select"]),
        companions=_companions(data.get("companions", {}), path),
    )


def _companions(table: Any, path: Path) -> dict[str, str]:
    if not isinstance(table, dict) or not all(
        isinstance(url, str) for url in table.values()
    ):
        raise SeriesError(f"{path}: [companions] maps names to URLs (strings)")
    return dict(table)


def project_root() -> Path:
    """Where ``patches/`` and ``overlay/`` live: ``$ATOM_CKFREE_ROOT`` or this checkout."""
    root = Path(os.environ.get("ATOM_CKFREE_ROOT", Path(__file__).resolve().parents[1]))
    if not (root / "patches").is_dir():
        raise UserError(
            f"no patches/ folder in {root}",
            "install atom-ckfree from its checkout (pip install -e .) or set "
            "ATOM_CKFREE_ROOT",
        )
    return root


def current() -> Project:
    """The manifest of the project in use (``project_root()``), read again only when
    the file changed."""
    patches = project_root() / "patches"
    try:
        stat = (patches / MANIFEST).stat()
    except OSError:
        return load(patches)  # which says what is wrong with it
    return _loaded(patches, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _loaded(patches: Path, mtime_ns: int, size: int) -> Project:
    return load(patches)
