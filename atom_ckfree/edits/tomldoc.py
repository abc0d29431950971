"""Edit primitives for TOML files (``pyproject.toml``), on tomlkit.

A table is named by its path, ``("tool", "pytest", "ini_options")``. tomlkit keeps
every byte it was not asked to change — comments, spacing, the order of tables — so
an edit here changes exactly the lines of the value it sets. A missing table is
created at the end of its parent (``[tool.pytest.ini_options]`` after the last
``[tool.*]`` table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Table
from tomlkit.toml_document import TOMLDocument

from .base import Conflict, Edit


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _dotted(path: Sequence[str]) -> str:
    return ".".join(path) or "(document)"


def _line_of(
    doc: TOMLDocument, path: Sequence[str], key: str | None = None
) -> int | None:
    """The 1-based line of ``[path]`` (or of ``key`` in it), from the rendered text:
    tomlkit keeps no positions, and the text it renders is the text it parsed."""
    lines = tomlkit.dumps(doc).splitlines()
    header = f"[{_dotted(path)}]"
    start = 0
    if path:
        found = [i for i, line in enumerate(lines) if line.strip() == header]
        if not found:
            return None
        start = found[0]
    if key is None:
        return start + 1
    for i in range(start + (1 if path else 0), len(lines)):
        text = lines[i].strip()
        if path and text.startswith("[") and i > start:
            break
        if text.split("=", 1)[0].strip().strip("\"'") == key:
            return i + 1
    return start + 1


class TomlEdit(Edit):
    format = "toml"

    def __init__(self, id: str, table: Sequence[str], key: str):
        super().__init__(id)
        self.table = tuple(table)
        self.key = key

    def conflict(self, doc, expected: str, found: str) -> Conflict:
        return Conflict(self.id, expected, found, _line_of(doc, self.table, self.key))

    def find_table(
        self, doc: TOMLDocument, create: bool
    ) -> Table | TOMLDocument | None:
        """The table at ``self.table``; missing tables are created when ``create``."""
        node: Any = doc
        for depth, name in enumerate(self.table):
            if name not in node:
                if not create:
                    return None
                last = depth == len(self.table) - 1
                node.append(name, tomlkit.table(is_super_table=not last))
            node = node[name]
            if isinstance(node, AoT) or not isinstance(node, (Table, dict)):
                raise Conflict(
                    self.id,
                    f"a table [{_dotted(self.table[: depth + 1])}]",
                    f"a {type(node).__name__}",
                    _line_of(doc, self.table[:depth]),
                )
        return node


class SetValue(TomlEdit):
    """Ensure ``key = value`` in the table at ``table`` (created when missing).

    Already applied when the key holds ``value``; a different value is replaced only
    when it is the ``replaces`` value the edit was written against, else a conflict."""

    def __init__(
        self,
        id: str,
        table: Sequence[str],
        key: str,
        value: Any,
        *,
        replaces: Any = None,
    ):
        super().__init__(id, table, key)
        self.value, self.replaces = value, replaces

    def apply(self, doc):
        table = self.find_table(doc, create=False)
        if table is not None and self.key in table:
            have = _plain(table[self.key])
            if have == self.value:
                return doc, False
            if self.replaces is None or have != self.replaces:
                expected = (
                    f"{self.key} = {self.replaces!r}"
                    if self.replaces is not None
                    else f"no {self.key}"
                )
                raise self.conflict(doc, expected, f"{self.key} = {have!r}")
            table[self.key] = self.value
            return doc, True
        table = self.find_table(doc, create=True)
        _add(table, self.key, _item(self.value))
        return doc, True


def _add(table: Any, key: str, item: Any) -> None:
    """Add ``key`` right after the table's last value, before the blank lines and
    comments that lead to the next table (``Table.add`` would put it after them)."""
    container = getattr(table, "value", table)
    body = getattr(container, "body", [])
    values = [
        k.key for k, v in body if k is not None and not isinstance(v, (Table, AoT))
    ]
    if values:
        container._insert_after(values[-1], key, item)
    elif any(isinstance(v, (Table, AoT)) for _, v in body):
        container._insert_at(0, key, item)  # values come before the sub-tables
    else:
        table.add(key, item)


def _item(value: Any) -> Any:
    if isinstance(value, list) and len(value) > 1:
        array = tomlkit.array()
        array.extend(value)
        array.multiline(True)
        return array
    return tomlkit.item(value)


class AddArrayItem(TomlEdit):
    """Ensure the array ``key`` in the table at ``table`` holds ``item`` (appended);
    the array and its tables are created when missing. Already applied when the item
    is there (``match`` may give a prefix that identifies it, e.g. ``"gpu:"`` for a
    pytest marker whose description upstream reworded). A key holding something
    other than an array is a conflict."""

    def __init__(
        self,
        id: str,
        table: Sequence[str],
        key: str,
        item: Any,
        *,
        match: str | None = None,
    ):
        super().__init__(id, table, key)
        self.item, self.match = item, match

    def _present(self, values: list) -> bool:
        if self.item in values:
            return True
        return self.match is not None and any(
            isinstance(v, str) and v.startswith(self.match) for v in values
        )

    def apply(self, doc):
        table = self.find_table(doc, create=True)
        if self.key not in table:
            array = tomlkit.array()
            array.append(self.item)
            array.multiline(True)
            _add(table, self.key, array)
            return doc, True
        array = table[self.key]
        if not isinstance(array, Array):
            raise self.conflict(
                doc, f"{self.key} = [ … ] (an array)", f"{self.key} = {_plain(array)!r}"
            )
        if self._present(_plain(array)):
            return doc, False
        array.append(self.item)
        return doc, True
