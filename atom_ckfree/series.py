"""The patch series: one folder each under ``patches/``, described by ``series.toml``.

``series.toml`` holds ``number``, ``slug``, ``title``, ``depends_on``, ``description``
(the PR text), ``overlay`` (new files, by their ATOM path, taken from ``overlay/``),
``overlay_covered`` (optional: a module of the folder whose ``COVERED`` maps an
overlay path to ``(covers, evidence)``, for an overlay file upstream later made its
own: ``covers(their_text)`` says theirs does what ours did), an ``[edits]`` table mapping each ATOM file the series changes to the module in
the folder that holds its edits (a list named ``EDITS``) — or to a list of
modules, applied in order, where two files share edits — and a ``[tests]`` table:
``atom``, the ATOM test files that cover the series, and ``ckfree``, this project's
test files that apply it and check it (the PR body lists both).
"""

from __future__ import annotations

import importlib.util
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from .edits import FORMATS, Edit
from .errors import SeriesError, UserError
from .project import project_root


@dataclass(frozen=True)
class Series:
    number: int
    slug: str
    title: str
    description: str
    depends_on: tuple[int, ...]
    edit_modules: dict[str, tuple[str, ...]]
    overlay: tuple[str, ...]
    folder: Path
    atom_tests: tuple[str, ...] = ()
    ckfree_tests: tuple[str, ...] = ()
    covered_module: str | None = None

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.slug}"

    @property
    def files(self) -> tuple[str, ...]:
        """Every ATOM path this series writes."""
        return tuple(self.edit_modules) + self.overlay

    def overlay_source(self, path: str) -> Path:
        return self.folder.parent.parent / "overlay" / path

    @cached_property
    def covered(self) -> dict[str, tuple[Callable[[str], bool], str]]:
        """Overlay path → (does upstream's own file cover ours?, the evidence)."""
        if self.covered_module is None:
            return {}
        path = self.folder / self.covered_module
        module = _run_module(path, f"atom_ckfree_series.s{self.number:02d}.{path.stem}")
        covered = getattr(module, "COVERED", None)
        if not isinstance(covered, dict) or set(covered) - set(self.overlay):
            raise SeriesError(
                f"{path}: COVERED must map overlay paths of this series to "
                "(covers, evidence)"
            )
        return covered

    @cached_property
    def edits(self) -> dict[str, list[Edit]]:
        """ATOM path → its edits, loaded from the series' modules."""
        loaded = {}
        for target, module_files in self.edit_modules.items():
            edits = []
            for module_file in module_files:
                path = self.folder / module_file
                edits += _load_edits(
                    path, f"atom_ckfree_series.s{self.number:02d}.{path.stem}"
                )
            formats = {e.format for e in edits}
            if len(formats) != 1 or formats - set(FORMATS):
                where = self.folder / module_files[-1]
                raise SeriesError(
                    f"{where}: edits of one known format expected, got {sorted(formats)}"
                )
            loaded[target] = edits
        return loaded


def _load_edits(path: Path, name: str) -> list[Edit]:
    """The ``EDITS`` of one module."""
    module = _run_module(path, name)
    edits = getattr(module, "EDITS", None)
    if not isinstance(edits, (list, tuple)) or not all(
        isinstance(e, Edit) for e in edits
    ):
        raise SeriesError(f"{path}: EDITS must be a list of edits")
    if not edits:
        raise SeriesError(f"{path}: EDITS is empty")
    return list(edits)


def _run_module(path: Path, name: str):
    """A module of a series folder, run; one that does not run is the author's
    error, reported at its file and line."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise SeriesError(
            f"{error.filename}:{error.lineno}: syntax error in an edits module: {error.msg}"
        ) from error
    except Exception as error:  # whatever the author's code raised
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if f.filename == str(path)
        ]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        raise SeriesError(
            f"{where}: the edits module fails to load: {type(error).__name__}: {error}"
        ) from error
    return module


# series.toml: key → (its type, the type of its items or values, required)
_MANIFEST = {
    "number": (int, None, True),
    "slug": (str, None, True),
    "title": (str, None, True),
    "description": (str, None, True),
    "depends_on": (list, int, False),
    "overlay": (list, str, False),
    "overlay_covered": (str, None, False),
    "edits": (dict, (str, list), False),
}


def _read_manifest(manifest: Path) -> dict:
    """``series.toml`` as a dict whose keys and types were checked, or a SeriesError
    naming the file, the line or the key."""
    try:
        data = tomlkit.parse(manifest.read_text()).unwrap()
    except tomlkit.exceptions.ParseError as error:
        raise SeriesError(
            f"{manifest}:{error.line}: not valid TOML: {error}"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise SeriesError(f"{manifest}: cannot read it: {error}") from error
    for key, (kind, item, required) in _MANIFEST.items():
        if key not in data:
            if required:
                raise SeriesError(f"{manifest}: the key {key!r} is missing")
            continue
        value = data[key]
        items = value.values() if isinstance(value, dict) else value
        if (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or (
                item
                and not all(
                    isinstance(v, item) and not isinstance(v, bool) for v in items
                )
            )
        ):
            wanted = kind.__name__ + (f" of {_names(item)}" if item else "")
            raise SeriesError(
                f"{manifest}: {key!r} must be a {wanted}, got {_shown(value)}"
            )
    return data


def _names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _modules(value: str | list) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_series(folder: Path) -> Series:
    data = _read_manifest(folder / "series.toml")
    series = Series(
        number=data["number"],
        slug=data["slug"],
        title=data["title"],
        description=data["description"].strip(),
        depends_on=tuple(data.get("depends_on", ())),
        edit_modules={
            path: _modules(modules) for path, modules in data.get("edits", {}).items()
        },
        overlay=tuple(data.get("overlay", ())),
        covered_module=data.get("overlay_covered"),
        folder=folder,
        atom_tests=tuple(data.get("tests", {}).get("atom", ())),
        ckfree_tests=tuple(data.get("tests", {}).get("ckfree", ())),
    )
    if folder.name != series.name:
        raise SeriesError(f"{folder}: folder name should be {series.name}")
    missing = [p for p in series.overlay if not series.overlay_source(p).is_file()]
    if series.covered_module and not (folder / series.covered_module).is_file():
        missing.append(series.covered_module)
    missing += [
        m
        for modules in series.edit_modules.values()
        for m in modules
        if not isinstance(m, str) or not (folder / m).is_file()
    ]
    if missing:
        raise SeriesError(
            f"{folder / 'series.toml'} names files that do not exist: {missing}"
        )
    return series


def load_all(root: Path | None = None) -> list[Series]:
    root = root or project_root()
    found = sorted(
        (
            load_series(d)
            for d in (root / "patches").iterdir()
            if (d / "series.toml").is_file()
        ),
        key=lambda s: s.number,
    )
    numbers = [s.number for s in found]
    if numbers != list(range(1, len(found) + 1)):
        raise SeriesError(
            f"{root / 'patches'}: series numbers must run 1..N without gaps, got {numbers}"
        )
    claimed: dict[str, Series] = {}
    for s in found:
        for path in s.overlay:
            if path in claimed:
                raise SeriesError(
                    f"{s.folder / 'series.toml'}: overlay file {path} is already "
                    f"claimed by series {claimed[path].number} "
                    f"({claimed[path].folder / 'series.toml'})"
                )
            claimed[path] = s
    for s in found:
        bad = [d for d in s.depends_on if not 1 <= d < s.number]
        if bad:
            raise SeriesError(
                f"{s.folder / 'series.toml'}: depends_on {bad} names no earlier series"
            )
    return found


def select(spec: str, available: list[Series]) -> list[Series]:
    """``all``, ``3``, ``1,2``, ``1-4`` or a mix (``1-3,5``) → those series in order."""
    by_number = {s.number: s for s in available}
    valid = f"1-{len(available)} or all"
    if spec.strip() == "all":
        return list(available)
    chosen: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UserError(
                f"cannot read series {part.strip()!r}",
                f"use e.g. 1,2 or 1-4 or {valid}",
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if low > high:
            raise UserError(
                f"empty series range {part.strip()!r}", "write the lower number first"
            )
        for number in range(low, high + 1):
            if number not in by_number:
                raise UserError(f"unknown series {number}", f"choose from {valid}")
            if number in chosen:
                raise UserError(
                    f"series {number} is given twice in {spec!r}", "name each once"
                )
            chosen.append(number)
    return [by_number[n] for n in sorted(chosen)]
