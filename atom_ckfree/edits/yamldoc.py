"""Edit primitives for YAML files (GitHub workflows), on ruamel.yaml's round-trip model.

A place in the document is a *key path*: a tuple whose items are mapping keys
(``"jobs"``), list indexes (``0``) or, for lists of mappings such as a job's
``steps``, a selector ``{"name": "Run tests"}`` that picks the one item whose
fields have those values. Values to insert are plain Python data or YAML text
(:func:`from_yaml`), which keeps block scalars (``run: |``) and comments as written.

Every primitive compares *data*, not text, to recognise its change as already made,
and touches only the nodes it changes; ``formats.py`` restores the original bytes of
every line the edit did not touch.
"""

from __future__ import annotations

import copy
import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

from .base import Conflict, Edit, Unless
from .formats import _yaml_parse


def from_yaml(text: str, column: int = 0) -> Any:
    """Parse a (possibly indented) YAML snippet into round-trip nodes to insert at
    ``column`` (e.g. 4 for a job's body): comments inside it keep their place only
    when parsed at the indentation they will be rendered at."""
    body = textwrap.dedent(text).strip("\n")
    levels = column // 2
    wrapper = [f"{'  ' * i}_{i}:" for i in range(levels)]
    node = _yaml_parse(
        "\n".join(wrapper + [textwrap.indent(body, "  " * levels)]) + "\n"
    )
    for i in range(levels):
        node = node[f"_{i}"]
    return node


def plain(node: Any) -> Any:
    """The data of a node without ruamel's styles and comments, for comparison."""
    if isinstance(node, dict):
        return {plain(k): plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _show(node: Any, limit: int = 80) -> str:
    text = repr(plain(node))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line_of(parent: Any, step: Any) -> int | None:
    """1-based line of ``parent[step]`` as parsed (None for nodes we inserted)."""
    try:
        if isinstance(parent, CommentedMap):
            return parent.lc.key(step)[0] + 1
        if isinstance(parent, CommentedSeq):
            return parent.lc.item(step)[0] + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    line = getattr(getattr(parent, "lc", None), "line", None)
    return None if line is None else line + 1


def _node_line(node: Any) -> int | None:
    line = getattr(getattr(node, "lc", None), "line", None)
    return None if line is None else line + 1


def _path_text(path: Sequence[Any]) -> str:
    out = []
    for step in path:
        if isinstance(step, dict):
            out.append("[" + ",".join(f"{k}={v!r}" for k, v in step.items()) + "]")
        elif isinstance(step, int):
            out.append(f"[{step}]")
        else:
            out.append(("." if out else "") + str(step))
    return "".join(out) or "(document)"


class YamlEdit(Edit):
    format = "yaml"

    def __init__(self, id: str, path: Sequence[Any] = ()):
        super().__init__(id)
        self.path = tuple(path)

    def conflict(self, expected: str, found: str, line: int | None) -> Conflict:
        return Conflict(self.id, expected, found, line)

    def walk(self, doc: Any, path: Sequence[Any] | None = None) -> Any:
        """The node at ``path`` (default: this edit's); a Conflict names the first
        step that is missing and the line of the last node that was found."""
        path = self.path if path is None else tuple(path)
        node, line = doc, 1
        for depth, step in enumerate(path):
            where = _path_text(path[: depth + 1])
            if isinstance(step, dict):
                if not isinstance(node, list):
                    raise self.conflict(
                        f"a list at {_path_text(path[:depth])}",
                        type(node).__name__,
                        line,
                    )
                hits = [
                    i
                    for i, item in enumerate(node)
                    if isinstance(item, dict)
                    and all(plain(item.get(k)) == v for k, v in step.items())
                ]
                if len(hits) != 1:
                    found = "no such item" if not hits else f"{len(hits)} such items"
                    raise self.conflict(f"one item {where}", found, line)
                line = _line_of(node, hits[0]) or line
                node = node[hits[0]]
            elif isinstance(step, int):
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    raise self.conflict(f"an item {where}", _show(node), line)
                line = _line_of(node, step) or line
                node = node[step]
            else:
                if not isinstance(node, dict) or step not in node:
                    found = (
                        f"keys {list(node)}" if isinstance(node, dict) else _show(node)
                    )
                    raise self.conflict(f"the key {where}", found, line)
                line = _line_of(node, step) or line
                node = node[step]
        return node

    def mapping(self, doc: Any, path: Sequence[Any] | None = None) -> CommentedMap:
        node = self.walk(doc, path)
        if not isinstance(node, dict):
            p = self.path if path is None else path
            raise self.conflict(
                f"a mapping at {_path_text(p)}", _show(node), _node_line(node)
            )
        return node

    def line(self, doc: Any) -> int | None:
        try:
            return _node_line(self.walk(doc))
        except Conflict:
            return None


def _last_entry(container: Any, key: Any) -> tuple[Any, Any]:
    """The innermost (container, key) whose end-of-line comment ends ``container[key]``
    when it is rendered: ruamel keeps the blank lines after a block there."""
    value = container[key]
    while isinstance(value, (dict, list)) and len(value):
        container, key = value, (
            list(value)[-1] if isinstance(value, dict) else len(value) - 1
        )
        value = container[key]
    return container, key


def _move_trailing_lines(before: tuple[Any, Any], after: tuple[Any, Any]) -> None:
    """Blank (and comment) lines that followed the entry ``before`` move behind the
    entry ``after`` inserted next to it, so that they keep separating the same blocks.
    """
    old_owner, old_key = _last_entry(*before)
    entry = old_owner.ca.items.get(old_key) if hasattr(old_owner, "ca") else None
    if not entry or entry[2] is None:
        return
    token = entry[2]
    first, rest = _split_token(old_owner[old_key], token.value)
    if not rest:
        return
    new_owner, new_key = _last_entry(*after)
    if not hasattr(new_owner, "ca") or new_owner.ca.items.get(new_key):
        return
    if first:
        token.value = first
    else:
        entry[2] = None
    moved = copy.copy(token)
    moved.value = ("" if _is_block_scalar(new_owner[new_key]) else "\n") + rest
    new_owner.ca.items[new_key] = [None, None, moved, None]


def _is_block_scalar(value: Any) -> bool:
    return isinstance(value, (LiteralScalarString, FoldedScalarString))


def _split_token(value: Any, text: str) -> tuple[str, str]:
    """(end-of-line part, lines after it) of a comment token; after a block scalar
    (``run: |``) there is no end-of-line part, every line of it follows the block."""
    if _is_block_scalar(value):
        return "", text
    first, _, rest = text.partition("\n")
    return first + "\n", rest


def _insert(
    mapping: CommentedMap, key: str, value: Any, after: str | None, blank_line: bool
) -> None:
    keys = list(mapping)
    previous = after if after is not None else (keys[-1] if keys else None)
    if after is not None:
        mapping.insert(keys.index(after) + 1, key, value)
    else:
        mapping[key] = value
    if previous is not None:
        _move_trailing_lines((mapping, previous), (mapping, key))
    if blank_line and previous is not None and not _ends_with_blank(mapping, previous):
        mapping.yaml_set_comment_before_after_key(key, before="\n")


def _ends_with_blank(mapping: CommentedMap, key: Any) -> bool:
    owner, last = _last_entry(mapping, key)
    entry = owner.ca.items.get(last) if hasattr(owner, "ca") else None
    if not entry or entry[2] is None:
        return False
    _, rest = _split_token(owner[last], entry[2].value)
    return rest.endswith("\n") and rest.strip(" \n") == "" or rest.endswith("\n\n")


class SetEntry(YamlEdit):
    """Set ``key`` of the mapping at ``path`` to ``value``.

    Already applied when the key holds ``value``. An existing different value is
    replaced only when it is the ``replaces`` value the edit was written against;
    anything else is a conflict. ``drop_comments`` removes comment lines on or just
    above the key that contain one of the given texts (e.g. a stale ``# TODO``)."""

    def __init__(
        self,
        id: str,
        path: Sequence[Any],
        key: str,
        value: Any,
        *,
        replaces: Any = None,
        after: str | None = None,
        drop_comments: Iterable[str] = (),
    ):
        super().__init__(id, path)
        self.key, self.value, self.replaces, self.after = key, value, replaces, after
        self.drop_comments = tuple(drop_comments)

    def apply(self, doc):
        mapping = self.mapping(doc)
        if self.key in mapping:
            have = plain(mapping[self.key])
            if have == plain(self.value):
                return doc, False
            if self.replaces is None or have != plain(self.replaces):
                expected = (
                    f"{self.key}: {_show(self.replaces)}"
                    if self.replaces is not None
                    else f"no {self.key}"
                )
                raise self.conflict(
                    expected, f"{self.key}: {_show(have)}", _line_of(mapping, self.key)
                )
            _drop_comment_lines(mapping, self.key, self.drop_comments)
            mapping[self.key] = self.value
            return doc, True
        if self.after is not None and self.after not in mapping:
            raise self.conflict(
                f"the key {self.after} to insert after",
                f"keys {list(mapping)}",
                _node_line(mapping),
            )
        _insert(mapping, self.key, self.value, self.after, blank_line=False)
        return doc, True


def newer_action(id: str, job: str, step: str, old: str, new: str) -> Edit:
    """``uses: old`` → ``uses: new`` in a job's named step, unless the step already
    uses ``new``'s major version or a later one (upstream moved on by itself)."""
    edit = SetEntry(
        id, ("jobs", job, "steps", {"name": step}), "uses", new, replaces=old
    )
    major = int(new.rsplit("@v", 1)[1])

    def present(doc) -> bool:
        found = re.search(r"@v(\d+)", str(edit.mapping(doc).get("uses", "")))
        return bool(found) and int(found[1]) >= major

    return Unless(edit, present)


def _drop_comment_lines(
    mapping: CommentedMap, key: str, texts: tuple[str, ...]
) -> None:
    """Remove comment lines containing any of ``texts`` from the end-of-line comment of
    ``key`` and from the comment lines that ruamel keeps on the key before it."""
    if not texts:
        return
    keys = list(mapping)
    index = keys.index(key)
    for owner in keys[max(0, index - 1) : index + 1]:
        entry = mapping.ca.items.get(owner)
        if not entry or entry[2] is None:
            continue
        token = entry[2]
        lines = token.value.splitlines(keepends=True)
        kept = [
            ("\n" if i == 0 else "") if any(t in line for t in texts) else line
            for i, line in enumerate(lines)
        ]
        value = "".join(kept)
        if value in ("", "\n"):
            entry[2] = None
        else:
            token.value = value


def _merge(edit: YamlEdit, into: CommentedMap, data: dict, where: tuple) -> bool:
    changed = False
    for key, value in data.items():
        if key not in into:
            _insert(into, key, value, None, blank_line=False)
            changed = True
        elif isinstance(into[key], dict) and isinstance(value, dict):
            changed |= _merge(edit, into[key], value, where + (key,))
        elif plain(into[key]) != plain(value):
            raise edit.conflict(
                f"{_path_text(where + (key,))} absent or {_show(value)}",
                _show(into[key]),
                _line_of(into, key),
            )
    return changed


class MergeMapping(YamlEdit):
    """Deep-merge ``data`` into the mapping at ``path``: missing keys are added (at
    the end), nested mappings merged, equal values left alone; a key that holds a
    different value is a conflict."""

    def __init__(self, id: str, path: Sequence[Any], data: Any):
        super().__init__(id, path)
        self.data = data

    def apply(self, doc):
        return doc, _merge(self, self.mapping(doc), self.data, self.path)


class AddJob(YamlEdit):
    """Add the job ``name`` (YAML text or data) to the workflow's ``jobs``, after the
    job ``after`` or at the end, separated by a blank line. Already applied when a job
    of that name with the same definition exists; a different one is a conflict."""

    def __init__(self, id: str, name: str, job: Any, *, after: str | None = None):
        super().__init__(id, ("jobs",))
        self.name = name
        self.job = from_yaml(job, column=4) if isinstance(job, str) else job
        self.after = after

    def apply(self, doc):
        jobs = self.mapping(doc)
        if self.name in jobs:
            if plain(jobs[self.name]) == plain(self.job):
                return doc, False
            raise self.conflict(
                f"no job {self.name}, or ours",
                "a job of that name with another definition",
                _line_of(jobs, self.name),
            )
        if self.after is not None and self.after not in jobs:
            raise self.conflict(
                f"the job {self.after} to add {self.name} after",
                f"jobs {list(jobs)}",
                _node_line(jobs),
            )
        _insert(jobs, self.name, self.job, self.after, blank_line=True)
        return doc, True


_EXPRESSION = re.compile(r"^\s*\$\{\{(.*)\}\}\s*$", re.DOTALL)


def _bare(expression: str) -> str:
    match = _EXPRESSION.match(expression)
    return (match[1] if match else expression).strip()


def _squash(expression: str) -> str:
    return re.sub(r"\s+", "", expression)


class AddCondition(YamlEdit):
    """Make the job or step at ``path`` also require ``condition`` (a GitHub Actions
    expression, with or without ``${{ }}``): sets ``if:`` when there is none, else
    joins ours in front with ``&&``. Already applied when the condition is part of the
    existing ``if:`` (whitespace aside)."""

    def __init__(self, id: str, path: Sequence[Any], condition: str):
        super().__init__(id, path)
        self.condition = _bare(condition)

    def apply(self, doc):
        node = self.mapping(doc)
        if "if" not in node:
            keys = list(node)
            # GitHub's own order: name (and needs/uses) first, then if:
            at = next(
                (
                    i
                    for i, k in enumerate(keys)
                    if k not in ("name", "needs", "uses", "id")
                ),
                len(keys),
            )
            node.insert(at, "if", f"${{{{ {self.condition} }}}}")
            return doc, True
        existing = node["if"]
        if not isinstance(existing, str):
            existing = (
                "true"
                if existing is True
                else "false" if existing is False else str(existing)
            )
        if _squash(self.condition) in _squash(_bare(existing)):
            return doc, False
        joined = f"${{{{ {self.condition} && ({_bare(existing)}) }}}}"
        node["if"] = type(node["if"])(joined) if isinstance(node["if"], str) else joined
        return doc, True


def _conjuncts(expression: str) -> list[str]:
    """``a && (b || c) && d`` → ``["a", "(b || c)", "d"]``: split at the top-level
    ``&&`` only (not inside parentheses or quotes)."""
    terms, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(expression):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and expression.startswith("&&", i):
            terms.append(expression[start:i].strip())
            start = i + 2
    return [*terms, expression[start:].strip()]


class SwitchOn(YamlEdit):
    """Turn on the job or step at ``path`` that a literal ``false`` in its ``if:``
    switched off (``if: false``, ``${{ false }}``, ``${{ x && false }}``), putting
    ``guard`` where the ``false`` stood and keeping the other conditions. Already
    applied when no ``false`` switches it off (upstream may have turned it on)."""

    def __init__(
        self,
        id: str,
        path: Sequence[Any],
        guard: str,
        drop_comments: Iterable[str] = (),
    ):
        super().__init__(id, path)
        self.guard = _bare(guard)
        self.drop_comments = tuple(drop_comments)

    def apply(self, doc):
        node = self.mapping(doc)
        existing = node.get("if")
        if existing is None or existing is True:
            return doc, False
        terms = _conjuncts("false" if existing is False else _bare(str(existing)))
        if "false" not in terms:
            return doc, False
        terms = [self.guard if term == "false" else term for term in terms]
        _drop_comment_lines(node, "if", self.drop_comments)
        node["if"] = f"${{{{ {' && '.join(terms)} }}}}"
        return doc, True
