"""Edit primitives for Python sources, on libcst.

Each primitive names its place by scope (``"Class.method"``) and an anchor
(:mod:`.pysyntax`), recognises its own change as already made, and replaces only
the nodes it changes, so every other byte of the file stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import libcst as cst

from ..errors import SeriesError
from .base import Conflict, Edit
from .pysyntax import (
    Anchor,
    code_of,
    enclosing_block,
    find_all,
    find_one,
    find_scope,
    lines_of,
    normal_form,
    parents,
    parse_statements,
    same_code,
    statements_equal,
)


def found(scope: str, anchor: Anchor) -> Callable[[cst.Module], bool]:
    """For :class:`~.base.Unless`: whether ``anchor`` stands in ``scope``
    (``"Class.method"``), e.g. upstream's own form of a fix."""
    return lambda module: bool(find_all(find_scope(module, scope, ""), anchor))


def missing(scope: str, anchor: Anchor) -> Callable[[cst.Module | None], bool]:
    """For :class:`~.base.Obsolete`: whether upstream removed ``anchor`` from
    ``scope`` — or the scope, or the whole file (``None``)."""

    def gone(module: cst.Module | None) -> bool:
        if module is None:
            return True
        try:
            return not find_all(find_scope(module, scope, ""), anchor)
        except Conflict:
            return True

    return gone


class PythonEdit(Edit):
    format = "python"

    def __init__(self, id: str, scope: str = ""):
        super().__init__(id)
        self.scope = scope

    def apply(self, doc: cst.Module) -> tuple[cst.Module, bool]:
        return self.apply_in(doc, find_scope(doc, self.scope, self.id))

    def apply_in(
        self, module: cst.Module, scope: cst.CSTNode
    ) -> tuple[cst.Module, bool]:
        raise NotImplementedError

    def find(
        self, module: cst.Module, scope: cst.CSTNode, anchor: Anchor
    ) -> cst.CSTNode:
        return find_one(module, scope, self.scope, anchor, self.id)

    def conflict(
        self, module: cst.Module, node: cst.CSTNode, expected: str, found: str
    ):
        return Conflict(self.id, expected, found, lines_of(module)(node))


def _with_body(block: cst.CSTNode, body: list[cst.BaseStatement]) -> cst.CSTNode:
    return block.with_changes(body=body)


def _index(block: cst.CSTNode, node: cst.CSTNode) -> int:
    return next(i for i, s in enumerate(block.body) if s is node)


def _contains_run(body, payload) -> bool:
    """``payload`` appears in ``body`` as consecutive statements."""
    n = len(payload)
    return any(
        all(statements_equal(body[i + j], payload[j]) for j in range(n))
        for i in range(len(body) - n + 1)
    )


class InsertStatements(PythonEdit):
    """Insert ``code`` before or after an anchor statement, or at the start or end
    of the scope's body. Already applied when the same statements already stand in
    that block."""

    def __init__(
        self,
        id: str,
        scope: str,
        code: str,
        *,
        after: Anchor | None = None,
        before: Anchor | None = None,
        at: str | None = None,
    ):
        super().__init__(id, scope)
        if sum(x is not None for x in (after, before, at)) != 1:
            raise SeriesError(f"{id}: give exactly one of after=, before=, at=")
        if at not in (None, "start", "end"):
            raise SeriesError(f"{id}: at= is 'start' or 'end'")
        self.payload = parse_statements(code)
        self.after, self.before, self.at = after, before, at

    def apply_in(self, module, scope):
        if self.at:
            if isinstance(scope, cst.Module):
                block = scope
            else:
                block = scope.body
            anchor_index = 0 if self.at == "start" else len(block.body)
            if self.at == "start" and isinstance(scope, cst.Module):
                anchor_index = _after_docstring_and_imports(block.body)
            elif self.at == "start":
                anchor_index = 1 if _is_docstring(block.body[0]) else 0
        else:
            anchor = self.find(module, scope, self.after or self.before)
            block = enclosing_block(scope, anchor)
            anchor_index = _index(block, anchor) + (1 if self.after else 0)
        if _contains_run(block.body, self.payload):
            return module, False
        self._refuse_redefinition(module, block)
        body = list(block.body)
        body[anchor_index:anchor_index] = _spaced(self.payload, block, anchor_index)
        return module.deep_replace(block, _with_body(block, body)), True

    def _refuse_redefinition(self, module, block):
        for new in self.payload:
            if not isinstance(new, (cst.FunctionDef, cst.ClassDef)):
                continue
            for old in block.body:
                if isinstance(old, type(new)) and old.name.value == new.name.value:
                    raise self.conflict(
                        module,
                        old,
                        f"no definition of `{new.name.value}` yet",
                        "a different definition of that name",
                    )


def _spaced(payload: list, block, index: int) -> list:
    """Blank lines before inserted definitions, as PEP 8 has them (two at module
    level, one inside a class or function), unless they start the block."""
    if index == 0:
        return payload
    blank = [cst.EmptyLine(indent=False)] * (2 if isinstance(block, cst.Module) else 1)
    return [
        (
            s.with_changes(leading_lines=blank)
            if isinstance(s, (cst.FunctionDef, cst.ClassDef)) and not s.leading_lines
            else s
        )
        for s in payload
    ]


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def _is_import(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(
        stmt.body[0], (cst.Import, cst.ImportFrom)
    )


def _after_docstring_and_imports(body) -> int:
    index = 1 if body and _is_docstring(body[0]) else 0
    for i, stmt in enumerate(body):
        if _is_import(stmt):
            index = i + 1
    return index


class ReplaceStatement(PythonEdit):
    """Replace the statement (simple or compound) at ``anchor`` with ``code``.
    Already applied when the anchor is gone and ``code`` stands in the scope."""

    def __init__(
        self,
        id: str,
        scope: str,
        anchor: Anchor,
        code: str,
    ):
        super().__init__(id, scope)
        self.anchor = anchor
        self.payload = parse_statements(code)

    def apply_in(self, module, scope):
        if not find_all(scope, self.anchor) and any(
            _contains_run(b, self.payload) for b in _blocks(scope)
        ):
            return module, False
        target = self.find(module, scope, self.anchor)
        block = enclosing_block(scope, target)
        body = list(block.body)
        i = _index(block, target)
        payload = list(self.payload)
        if not payload[0].leading_lines:  # keep the comment and blank lines above it
            payload[0] = payload[0].with_changes(leading_lines=target.leading_lines)
        body[i : i + 1] = payload
        return module.deep_replace(block, _with_body(block, body)), True


def _blocks(scope) -> list[list]:
    """The statement list of every block in ``scope``."""
    found: list[list] = []

    class Blocks(cst.CSTVisitor):
        def visit_IndentedBlock(self, node):
            found.append(list(node.body))

        def visit_Module(self, node):
            found.append(list(node.body))

    scope.visit(Blocks())
    return found


class AddElse(PythonEdit):
    """Give an if/elif chain a final ``else:`` with ``code``."""

    def __init__(
        self,
        id: str,
        scope: str,
        head: Anchor,
        code: str,
    ):
        super().__init__(id, scope)
        self.head = head
        self.payload = parse_statements(code)

    def apply_in(self, module, scope):
        last = self.find(module, scope, self.head)
        while isinstance(last.orelse, cst.If):
            last = last.orelse
        if isinstance(last.orelse, cst.Else):
            if _contains_run(list(last.orelse.body.body), self.payload):
                return module, False
            raise self.conflict(
                module,
                last.orelse,
                f"{self.head} chain without an else",
                "an else branch with other code",
            )
        new = last.with_changes(orelse=cst.Else(body=cst.IndentedBlock(self.payload)))
        return module.deep_replace(last, new), True


class SetDictEntry(PythonEdit):
    """Add ``key: value`` to the dict literal assigned at ``anchor``, or replace
    the value of an existing ``key``."""

    def __init__(
        self,
        id: str,
        scope: str,
        anchor: Anchor,
        key: str,
        value: str,
    ):
        super().__init__(id, scope)
        self.anchor, self.key, self.value = anchor, key, value

    def apply_in(self, module, scope):
        line = self.find(module, scope, self.anchor)
        small = line.body[0] if isinstance(line, cst.SimpleStatementLine) else line
        mapping = getattr(small, "value", None)
        if not isinstance(mapping, cst.Dict):
            raise self.conflict(module, line, "a dict literal", code_of(line).strip())
        value = cst.parse_expression(self.value)
        elements = list(mapping.elements)
        for i, element in enumerate(elements):
            if isinstance(element, cst.DictElement) and same_code(
                element.key, self.key
            ):
                if same_code(element.value, self.value):
                    return module, False
                elements[i] = element.with_changes(value=value)
                break
        else:
            elements = _append(
                elements, [cst.DictElement(cst.parse_expression(self.key), value)]
            )
        return (
            module.deep_replace(mapping, mapping.with_changes(elements=elements)),
            True,
        )


def _append(elements: list, new: list) -> list:
    """``elements + new`` with commas shaped like the list's own: separators copy
    the existing separator, and a trailing comma (with its line break) moves to
    the new last element."""
    if not elements:
        return _append(new[:1], new[1:]) if new else []
    shape = next(
        (e.comma for e in elements[:-1] if isinstance(e.comma, cst.Comma)),
        cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
    )
    if isinstance(shape.whitespace_after, cst.ParenthesizedWhitespace):
        # the layout of the separator, never the comment lines that follow it
        shape = shape.with_changes(
            whitespace_after=shape.whitespace_after.with_changes(empty_lines=())
        )
    trailing = elements[-1].comma
    # existing separators stay as they are (with any comment lines after them)
    joined = list(elements[:-1]) + [elements[-1].with_changes(comma=shape)]
    joined += [e.with_changes(comma=shape) for e in new[:-1]]
    return joined + [new[-1].with_changes(comma=trailing)]


class AddImport(PythonEdit):
    """``from module import name, ...`` (or ``import module`` with no names),
    exactly once, after the module's existing imports."""

    def __init__(self, id: str, module: str, names: tuple[str, ...] = ()):
        super().__init__(id, "")
        self.module, self.names = module, tuple(names)

    def apply_in(self, module, scope):
        if not self.names:
            if _has_plain_import(module, self.module):
                return module, False
            return self._insert(module, f"import {self.module}"), True
        for stmt in module.body:
            node = _import_from(stmt, self.module)
            if node is None or isinstance(node.names, cst.ImportStar):
                continue
            have = {code_of(a.name) for a in node.names}
            missing = [n for n in self.names if n not in have]
            if not missing:
                return module, False
            names = _append(
                list(node.names), [cst.ImportAlias(cst.Name(n)) for n in missing]
            )
            return module.deep_replace(node, node.with_changes(names=names)), True
        return (
            self._insert(module, f"from {self.module} import {', '.join(self.names)}"),
            True,
        )

    def _insert(self, module, code):
        body = list(module.body)
        at = _after_docstring_and_imports(body)
        body[at:at] = parse_statements(code)
        return module.with_changes(body=body)


def _import_from(stmt, name: str) -> cst.ImportFrom | None:
    if not isinstance(stmt, cst.SimpleStatementLine):
        return None
    node = stmt.body[0]
    if (
        isinstance(node, cst.ImportFrom)
        and node.module
        and code_of(node.module) == name
    ):
        return node
    return None


def _has_plain_import(module, name: str) -> bool:
    return any(
        isinstance(s, cst.SimpleStatementLine)
        and isinstance(s.body[0], cst.Import)
        and any(code_of(a.name) == name for a in s.body[0].names)
        for s in module.body
    )


class ReplaceArgument(PythonEdit):
    """Set keyword argument ``keyword`` (or positional ``index``) of the call at
    ``anchor`` to ``value``; a missing keyword argument is added."""

    def __init__(
        self,
        id: str,
        scope: str,
        anchor: Anchor,
        value: str,
        *,
        keyword: str | None = None,
        index: int | None = None,
    ):
        super().__init__(id, scope)
        if (keyword is None) == (index is None):
            raise SeriesError(f"{id}: give exactly one of keyword=, index=")
        self.anchor, self.value, self.keyword, self.index = (
            anchor,
            value,
            keyword,
            index,
        )

    def apply_in(self, module, scope):
        node = self.find(module, scope, self.anchor)
        args = list(node.args)
        value = cst.parse_expression(self.value)
        if self.keyword is not None:
            at = next(
                (
                    i
                    for i, a in enumerate(args)
                    if a.keyword and a.keyword.value == self.keyword
                ),
                None,
            )
            if at is None:
                new = cst.Arg(
                    value,
                    keyword=cst.Name(self.keyword),
                    equal=cst.AssignEqual(
                        cst.SimpleWhitespace(""), cst.SimpleWhitespace("")
                    ),
                )
                args = _append(args, [new])
                return module.deep_replace(node, node.with_changes(args=args)), True
        else:
            positional = [
                i for i, a in enumerate(args) if a.keyword is None and not a.star
            ]
            if self.index >= len(positional):
                raise self.conflict(
                    module,
                    node,
                    f"a positional argument #{self.index} in {self.anchor}",
                    f"{len(positional)} positional arguments",
                )
            at = positional[self.index]
        if same_code(args[at].value, self.value):
            return module, False
        args[at] = args[at].with_changes(value=value)
        return module.deep_replace(node, node.with_changes(args=args)), True


class WrapInCondition(PythonEdit):
    """Put the statement at ``anchor`` under ``if condition:``, with ``orelse``
    code as its else branch when given."""

    def __init__(
        self,
        id: str,
        scope: str,
        anchor: Anchor,
        condition: str,
        orelse: str | None = None,
    ):
        super().__init__(id, scope)
        self.anchor, self.condition = anchor, condition
        self.orelse = parse_statements(orelse) if orelse else None

    def apply_in(self, module, scope):
        target = self.find(module, scope, self.anchor)
        block = enclosing_block(scope, target)
        owner = _owner_if(scope, block)
        if owner is not None and normal_form(code_of(owner.test)) == normal_form(
            self.condition
        ):
            return module, False
        wrapped = cst.If(
            test=cst.parse_expression(self.condition),
            body=cst.IndentedBlock([target.with_changes(leading_lines=())]),
            orelse=cst.Else(cst.IndentedBlock(self.orelse)) if self.orelse else None,
            leading_lines=target.leading_lines,
        )
        body = list(block.body)
        body[_index(block, target)] = wrapped
        return module.deep_replace(block, _with_body(block, body)), True


def _owner_if(root, block) -> cst.If | None:
    if isinstance(block, cst.Module):
        return None
    owner = parents(root)[block]
    return owner if isinstance(owner, cst.If) and owner.body is block else None


class RenameName(PythonEdit):
    """Rename every use of ``old`` (names, attributes, imported names) to ``new``
    within the scope."""

    def __init__(
        self,
        id: str,
        scope: str,
        old: str,
        new: str,
    ):
        super().__init__(id, scope)
        self.old, self.new = old, new

    def apply_in(self, module, scope):
        olds = find_all(scope, _name_anchor(self.old))
        if not olds:
            if find_all(scope, _name_anchor(self.new)):
                return module, False
            raise Conflict(
                self.id,
                f"a use of `{self.old}` in {self.scope or 'the module'}",
                "neither it nor its new name",
                lines_of(module)(scope) if scope is not module else None,
            )
        new_scope = scope.visit(_Renamer(self.old, self.new))
        if scope is module:
            return new_scope, True
        return module.deep_replace(scope, new_scope), True


def _name_anchor(name: str) -> Anchor:
    return Anchor(name, lambda n: isinstance(n, cst.Name) and n.value == name)


class _Renamer(cst.CSTTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def leave_Name(self, original_node, updated_node):
        if updated_node.value == self.old:
            return updated_node.with_changes(value=self.new)
        return updated_node
