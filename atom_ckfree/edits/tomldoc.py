"""Edit primitives for TOML files (``pyproject.toml``), on tomlkit.

A table is named by its path, ``("tool", "pytest", "ini_options")``. tomlkit keeps
every byte it was not asked to change — comments, spacing, the order of tables — so
an edit here changes exactly the lines of the value it sets. A missing table is
created at the end of its parent (``[tool.pytest.ini_options]`` after the last
``[tool.*]`` table).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Comment, Table, Whitespace
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


def _add(doc: TOMLDocument, table: Any, key: str, item: Any) -> TOMLDocument:
    """Add ``key`` right after the table's last value, before the blank lines and
    comments that lead to the next table. ``Table.add`` (tomlkit's public API) puts it
    after them, so the rendered line is moved back over them in the text, which is
    then parsed again: tomlkit renders exactly what it parsed."""
    before = tomlkit.dumps(doc)
    table.add(key, item)
    after = tomlkit.dumps(doc)
    body = getattr(table, "value", table).body
    index = next(i for i, (k, _) in enumerate(body) if k is not None and k.key == key)
    gap = "".join(v.as_string() for _, v in _trivia_before(body, index))
    if not gap:
        return doc
    size = len(after) - len(before)
    # the insertion point is ambiguous only within text the new line shares with
    # what follows it; take the one that follows the gap
    for at in range(len(os.path.commonprefix([before, after])), -1, -1):
        added = after[at : at + size]
        if before[:at] + added + before[at:] == after and before[:at].endswith(gap):
            moved = before[: at - len(gap)] + added + before[at - len(gap) :]
            return tomlkit.parse(moved)
    raise AssertionError(f"tomlkit did not append {key!r} after the table's trivia")


def _trivia_before(body: list, index: int) -> list:
    """The comments and blank lines right before ``body[index]``."""
    found = []
    for key, value in reversed(body[:index]):
        if key is not None or not isinstance(value, (Comment, Whitespace)):
            break
        found.append((key, value))
    return found[::-1]


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
            return _add(doc, table, self.key, array), True
        array = table[self.key]
        if not isinstance(array, Array):
            raise self.conflict(
                doc, f"{self.key} = [ … ] (an array)", f"{self.key} = {_plain(array)!r}"
            )
        if self._present(_plain(array)):
            return doc, False
        array.append(self.item)
        return doc, True
