"""The patch series: one folder each under ``patches/``, described by ``series.toml``.

``series.toml`` holds ``number``, ``slug``, ``title``, ``depends_on``, ``description``
(the PR text), ``overlay`` (new files, by their ATOM path, taken from ``overlay/``),
an ``[edits]`` table mapping each ATOM file the series changes to the module in
the folder that holds its edits (a list named ``EDITS``), and a ``[tests]`` table:
``atom``, the ATOM test files that cover the series, and ``ckfree``, this project's
test files that apply it and check it (the PR body lists both).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import tomlkit

from .edits import FORMATS, Edit
from .errors import SeriesError, UserError


def project_root() -> Path:
    """Where ``patches/`` and ``overlay/`` live: ``$ATOM_CKFREE_ROOT`` or this checkout."""
    root = Path(os.environ.get("ATOM_CKFREE_ROOT", Path(__file__).resolve().parents[1]))
    if not (root / "patches").is_dir():
        raise UserError(
            f"no patches/ folder in {root}",
            "install atom-ckfree from its checkout (pip install -e .) or set ATOM_CKFREE_ROOT",
        )
    return root


@dataclass(frozen=True)
class Series:
    number: int
    slug: str
    title: str
    description: str
    depends_on: tuple[int, ...]
    edit_modules: dict[str, str]
    overlay: tuple[str, ...]
    folder: Path
    atom_tests: tuple[str, ...] = ()
    ckfree_tests: tuple[str, ...] = ()

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
    def edits(self) -> dict[str, list[Edit]]:
        """ATOM path → its edits, loaded from the series' modules."""
        loaded = {}
        for target, module_file in self.edit_modules.items():
            path = self.folder / module_file
            spec = importlib.util.spec_from_file_location(
                f"atom_ckfree_series.s{self.number:02d}.{path.stem}", path
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            edits = list(module.EDITS)
            formats = {e.format for e in edits}
            if len(formats) != 1 or formats - set(FORMATS):
                raise SeriesError(
                    f"{path}: edits of one known format expected, got {formats}"
                )
            loaded[target] = edits
        return loaded


def load_series(folder: Path) -> Series:
    data = tomlkit.parse((folder / "series.toml").read_text()).unwrap()
    series = Series(
        number=data["number"],
        slug=data["slug"],
        title=data["title"],
        description=data["description"].strip(),
        depends_on=tuple(data.get("depends_on", ())),
        edit_modules=dict(data.get("edits", {})),
        overlay=tuple(data.get("overlay", ())),
        folder=folder,
        atom_tests=tuple(data.get("tests", {}).get("atom", ())),
        ckfree_tests=tuple(data.get("tests", {}).get("ckfree", ())),
    )
    if folder.name != series.name:
        raise SeriesError(f"{folder}: folder name should be {series.name}")
    missing = [p for p in series.overlay if not series.overlay_source(p).is_file()]
    missing += [m for m in series.edit_modules.values() if not (folder / m).is_file()]
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
        raise SeriesError(f"series numbers must run 1..N without gaps, got {numbers}")
    for s in found:
        bad = [d for d in s.depends_on if d >= s.number]
        if bad:
            raise SeriesError(f"series {s.number} depends on later series {bad}")
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
