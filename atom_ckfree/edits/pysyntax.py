"""Finding things in a libcst module: scopes by name, anchors by structure.

Anchors compare code by its AST, so formatting and comments never decide a match.
"""

from __future__ import annotations

import ast
import difflib
import functools
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.helpers import get_full_name_for_node
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from ..errors import SeriesError
from .base import Conflict

_EMPTY = cst.Module(body=[])


def code_of(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


def normal_form(code: str) -> str:
    """The AST dump of a statement list or an expression: equal for equal meaning."""
    code = textwrap.dedent(code).strip()
    try:
        return ast.dump(ast.parse(code, mode="eval"))
    except SyntaxError:
        pass
    try:
        return ast.dump(ast.parse(code))
    except SyntaxError:
        # an expression that black split over lines outside brackets
        # (``lambda: f(...)\n    == "1"`` as a dict value)
        return ast.dump(ast.parse(f"({code})", mode="eval"))


def same_code(node: cst.CSTNode, code: str) -> bool:
    return normal_form(code_of(node)) == normal_form(code)


def parse_statements(code: str) -> list[cst.BaseStatement]:
    module = cst.parse_module(textwrap.dedent(code).strip() + "\n")
    body = list(module.body)
    if module.header and body:  # libcst keeps leading comments in the module header
        first = body[0]
        body[0] = first.with_changes(
            leading_lines=[*module.header, *first.leading_lines]
        )
    return body


def _stmt_form(stmt: cst.CSTNode) -> str:
    return normal_form(code_of(stmt))


def statements_equal(a: cst.CSTNode, b: cst.CSTNode) -> bool:
    return _stmt_form(a) == _stmt_form(b)


@functools.lru_cache(maxsize=8)
def lines_of(module: cst.Module) -> Callable[[cst.CSTNode], int]:
    """A function giving a node's 1-based start line in ``module`` (positions are
    computed once per module: a drifted file reports many conflicts)."""
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    return lambda node: positions[node].start.line


def _name_of(node: cst.CSTNode) -> str | None:
    if isinstance(node, (cst.ClassDef, cst.FunctionDef)):
        return node.name.value
    return None


def _children_defs(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Classes and functions defined directly in ``node``'s body, looking through
    if/try/with blocks (``if has_triton_kernels(): def ...``) but not into other defs.
    """
    body = getattr(node, "body", None)
    if isinstance(body, cst.BaseSuite):
        body = body.body
    if not isinstance(body, (list, tuple)):
        return
    for stmt in body:
        if isinstance(stmt, (cst.ClassDef, cst.FunctionDef)):
            yield stmt
        elif isinstance(stmt, (cst.If, cst.Try, cst.With)):
            yield from _children_defs(stmt)
            for extra in _compound_tails(stmt):
                yield from _children_defs(extra)


def _compound_tails(stmt: cst.CSTNode) -> Iterator[cst.CSTNode]:
    if isinstance(stmt, cst.If) and stmt.orelse is not None:
        yield stmt.orelse
    if isinstance(stmt, cst.Try):
        yield from stmt.handlers
        if stmt.orelse is not None:
            yield stmt.orelse
        if stmt.finalbody is not None:
            yield stmt.finalbody


def find_scope(module: cst.Module, path: str, edit_id: str) -> cst.CSTNode:
    """``"Class.method"`` → that FunctionDef; ``""`` → the module."""
    node: cst.CSTNode = module
    walked: list[str] = []
    for part in [p for p in path.split(".") if p]:
        defs = list(_children_defs(node))
        hits = [d for d in defs if _name_of(d) == part]
        if len(hits) != 1:
            line = lines_of(module)
            inside = ".".join(walked) or "the module"
            names = [f"{_name_of(d)} (line {line(d)})" for d in defs]
            close = difflib.get_close_matches(part, [_name_of(d) for d in defs], 3)
            found = (
                f"{len(hits)} definitions of {part!r}"
                if hits
                else "no such definition"
                + (f"; similar: {', '.join(close)}" if close else "")
                + (f"; defined there: {', '.join(names[:12])}" if names else "")
            )
            raise Conflict(
                edit_id,
                f"one definition {part!r} in {inside}",
                found,
                line(node) if node is not module else None,
            )
        node = hits[0]
        walked.append(part)
    return node


@dataclass(frozen=True)
class Anchor:
    """A description a human can read plus a predicate on nodes."""

    description: str
    test: Callable[[cst.CSTNode], bool]
    code: str = ""  # what to look for similar code with, when it is not found

    def __str__(self) -> str:
        return self.description


def stmt(code: str) -> Anchor:
    """A simple statement equal to ``code`` (by AST)."""
    form = normal_form(code)
    return Anchor(
        f"statement `{code.strip()}`",
        lambda n: isinstance(n, cst.SimpleStatementLine) and _stmt_form(n) == form,
        code.strip(),
    )


def assign(target: str) -> Anchor:
    """An assignment (plain, annotated or augmented) to ``target``."""
    form = normal_form(target)

    def test(n: cst.CSTNode) -> bool:
        if not isinstance(n, cst.SimpleStatementLine) or len(n.body) != 1:
            return False
        small = n.body[0]
        if isinstance(small, cst.Assign):
            targets = [t.target for t in small.targets]
        elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
            targets = [small.target]
        else:
            return False
        return any(normal_form(code_of(t)) == form for t in targets)

    return Anchor(f"assignment to `{target}`", test, f"{target} =")


def if_test(code: str) -> Anchor:
    """An ``if`` (or ``elif``) whose condition is ``code``."""
    form = normal_form(code)
    return Anchor(
        f"`if {code.strip()}:`",
        lambda n: isinstance(n, cst.If) and normal_form(code_of(n.test)) == form,
        f"if {code.strip()}:",
    )


def call(func: str) -> Anchor:
    """A call expression of ``func`` (dotted name as written)."""
    form = normal_form(func)
    return Anchor(
        f"call of `{func}(...)`",
        lambda n: isinstance(n, cst.Call) and normal_form(code_of(n.func)) == form,
        f"{func}(",
    )


def defn(name: str) -> Anchor:
    """A function or class definition named ``name``."""
    return Anchor(
        f"definition of `{name}`",
        lambda n: isinstance(n, (cst.FunctionDef, cst.ClassDef))
        and n.name.value == name,
    )


def imports_from(package: str) -> Anchor:
    """An import of ``package`` or of anything under it."""

    def names(n: cst.CSTNode) -> list[str]:
        if isinstance(n, cst.ImportFrom) and n.module is not None and not n.relative:
            return [get_full_name_for_node(n.module) or ""]
        if isinstance(n, cst.Import):
            return [get_full_name_for_node(a.name) or "" for a in n.names]
        return []

    return Anchor(
        f"an import from `{package}`",
        lambda n: any(
            name == package or name.startswith(package + ".") for name in names(n)
        ),
    )


def matching(matcher: m.BaseMatcherNode, description: str) -> Anchor:
    """Any libcst matcher, for anchors the helpers above cannot say."""
    return Anchor(description, lambda n: m.matches(n, matcher))


def find_all(scope: cst.CSTNode, anchor: Anchor) -> list[cst.CSTNode]:
    """Every node in ``scope`` (itself included), in source order, that the anchor names."""
    return m.findall(scope, m.MatchIfTrue(anchor.test))


def find_one(
    module: cst.Module,
    scope: cst.CSTNode,
    scope_name: str,
    anchor: Anchor,
    edit_id: str,
) -> cst.CSTNode:
    hits = find_all(scope, anchor)
    if len(hits) == 1:
        return hits[0]
    line = lines_of(module)
    where = f"in {scope_name}" if scope_name else "in the module"
    if hits:
        found = f"{len(hits)} matches, at lines {', '.join(str(line(h)) for h in hits)}"
        raise Conflict(edit_id, f"exactly one {anchor} {where}", found, line(hits[0]))
    close = _closest(scope, anchor.code) if anchor.code else None
    if close is not None:
        text = _first_line(close)
        raise Conflict(
            edit_id,
            f"{anchor} {where}",
            f"no such code; closest is `{text}`",
            line(close),
        )
    first = code_of(scope).strip().splitlines()[:3] if scope is not module else []
    nearby = " | ".join(s.strip() for s in first)
    raise Conflict(
        edit_id,
        f"{anchor} {where}",
        f"no such code{'; the scope starts: ' + nearby if nearby else ''}",
        line(scope) if scope is not module else None,
    )


_STATEMENTS = (cst.SimpleStatementLine, cst.BaseCompoundStatement)


def _first_line(node: cst.CSTNode) -> str:
    """The node's first line of code, without the comments above it."""
    lines = (line.strip() for line in code_of(node).splitlines())
    return next((line for line in lines if line and not line.startswith("#")), "")


def _closest(scope: cst.CSTNode, code: str, cutoff: float = 0.6) -> cst.CSTNode | None:
    """The statement in ``scope`` whose first line reads most like ``code``."""
    best, best_ratio = None, cutoff
    for node in find_all(
        scope, Anchor("statement", lambda n: isinstance(n, _STATEMENTS))
    ):
        first = _first_line(node)
        if not first:
            continue
        ratio = difflib.SequenceMatcher(None, first, code).ratio()
        if ratio > best_ratio:
            best, best_ratio = node, ratio
    return best


def parents(root: cst.CSTNode) -> Mapping[cst.CSTNode, cst.CSTNode]:
    """The parent of every node under ``root``, by LibCST's ParentNodeProvider. A scope
    that is not a module is wrapped in one, and the wrapper keeps the nodes themselves
    (no copy), so the map answers for the nodes the caller holds."""
    module = root if isinstance(root, cst.Module) else cst.Module(body=[root])
    return MetadataWrapper(module, unsafe_skip_copy=True).resolve(ParentNodeProvider)


def enclosing_block(root: cst.CSTNode, node: cst.CSTNode) -> cst.CSTNode:
    """The Module or IndentedBlock whose ``body`` lists ``node``."""
    block = parents(root)[node]
    if not isinstance(block, (cst.Module, cst.IndentedBlock)):
        raise SeriesError(
            f"the anchor names a {type(node).__name__}, not a statement in a block"
        )
    return block
