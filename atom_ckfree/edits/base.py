"""What every edit is: a named, idempotent change to one parsed document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import DriftError


class Conflict(DriftError):
    """An edit could not find what it anchors on, or found something in its way.
    The engine turns it into a unit's conflict (report.conflict_text); one that
    reaches the CLI is a drift (exit 1) like any other."""

    def __init__(
        self, edit_id: str, expected: str, found: str, line: int | None = None
    ):
        self.edit_id, self.expected, self.found, self.line = (
            edit_id,
            expected,
            found,
            line,
        )
        where = f"line {line}: " if line else ""
        super().__init__(f"{where}{edit_id}: expected {expected}; found {found}")


class Edit:
    """One change to one file.

    ``apply`` returns the (possibly new) document and whether it changed anything:
    an edit that finds its change already made returns ``changed=False`` — that is
    how re-applying a series becomes a no-op and how ``status`` knows what is applied.
    It raises :class:`Conflict` when its anchor is gone or something else is in the way.
    """

    format: ClassVar[str]

    def __init__(self, id: str):
        self.id = id

    def apply(self, doc: Any) -> tuple[Any, bool]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


class Unless(Edit):
    """``edit``, unless ``present(doc)`` shows that its effect is already there in
    another form (upstream made the change its own way): then nothing to do.
    ``present`` answering with a Conflict counts as "not present"."""

    def __init__(self, edit: Edit, present: Callable[[Any], bool]):
        super().__init__(edit.id)
        self.edit, self.present = edit, present
        self.format = edit.format

    def apply(self, doc: Any) -> tuple[Any, bool]:
        try:
            if self.present(doc):
                return doc, False
        except Conflict:
            pass
        return self.edit.apply(doc)


class OnlyWhere(Edit):
    """``edit`` where ``holds(doc)``; elsewhere a Conflict (``expected`` says what
    was looked for). For an alternative of :class:`FirstOf` whose anchors fit
    more than one upstream but whose code fits one: it tells them apart."""

    def __init__(self, edit: Edit, holds: Callable[[Any], bool], expected: str):
        super().__init__(edit.id)
        self.edit, self.holds, self.expected = edit, holds, expected
        self.format = edit.format

    def apply(self, doc: Any) -> tuple[Any, bool]:
        try:
            holds = self.holds(doc)
        except Conflict:
            holds = False
        if not holds:
            raise Conflict(self.id, self.expected, "not so in this file")
        return self.edit.apply(doc)


class Moot(Exception):
    """Upstream removed or replaced what an edit changes: there is nothing left for
    it to do, and ``evidence`` names the upstream commit that made it so."""

    def __init__(self, edit_id: str, evidence: str):
        self.edit_id, self.evidence = edit_id, evidence
        super().__init__(f"{edit_id}: obsolete: {evidence}")


class Obsolete(Edit):
    """``edit``, unless ``gone(doc)`` shows that upstream removed or replaced the
    code it changes (``evidence``: the commit and what it did); then the unit is
    reported obsolete instead of applied or drifted. ``gone(None)`` is asked when
    the file itself is no longer there."""

    def __init__(self, edit: Edit, gone: Callable[[Any], bool], evidence: str):
        super().__init__(edit.id)
        self.edit, self.gone, self.evidence = edit, gone, evidence
        self.format = edit.format

    def apply(self, doc: Any) -> tuple[Any, bool]:
        if self.gone(doc):
            raise Moot(self.id, self.evidence)
        return self.edit.apply(doc)


class FirstOf(Edit):
    """One change written for more than one upstream: the first alternative whose
    anchors are all there makes it. Each alternative must make the same change in
    that upstream's form, and must raise its Conflict before it changes a mutable
    document (a YAML one); when none fits, the first one's conflict is reported (it
    is the form the series was written against)."""

    def __init__(self, id: str, *alternatives: Edit):
        super().__init__(id)
        if not alternatives or len({a.format for a in alternatives}) != 1:
            raise ValueError(f"{id}: FirstOf needs alternatives of one format")
        self.alternatives = alternatives
        self.format = alternatives[0].format

    @classmethod
    def each(cls, names, make: Callable[[Any], Edit]) -> FirstOf:
        """``make(name)`` for each name a thing has had upstream (a class, a job,
        a stage), newest first: one edit for whichever name is there."""
        alternatives = [make(name) for name in names]
        return cls(alternatives[0].id, *alternatives)

    def apply(self, doc: Any) -> tuple[Any, bool]:
        conflicts = []
        for alternative in self.alternatives:
            try:
                return alternative.apply(doc)
            except Conflict as conflict:
                conflicts.append(conflict)
        first = conflicts[0]
        raise Conflict(self.id, first.expected, first.found, first.line)
