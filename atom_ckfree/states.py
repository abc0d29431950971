"""The words the tool reports: where an edit stands, where a series stands, what
applying it did, and what the nightly sweep found. Each value is the word that the
terminal tables and the JSON reports print; compare with the members, never with
the words."""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """An enum whose members are their words: ``str()``, f-strings and JSON print
    the value (a plain ``str`` mix-in would print ``Outcome.APPLIED`` in f-strings)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class UnitState(Word):
    """One edit or overlay file in a tree."""

    APPLIED = "applied"
    PENDING = "pending"
    CONFLICT = "conflict"
    OBSOLETE = "obsolete"  # upstream removed or replaced what it changes


class SeriesState(Word):
    """A whole series in a tree (``status``)."""

    APPLIED = "applied"
    NOT_APPLIED = "not applied"
    PARTLY_APPLIED = "partly applied"
    CONFLICTING = "conflicting"


class Outcome(Word):
    """What ``apply`` did with a series."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"
    WOULD_APPLY = "would apply"
    CONFLICT = "conflict"
    SKIPPED = "skipped"


DONE = (Outcome.APPLIED, Outcome.ALREADY_APPLIED)


class Verdict(Word):
    """What the sweep found for a series at an upstream commit, best first."""

    VERIFIED = "applied+verified"
    ALREADY_UPSTREAM = "already upstream"
    OBSOLETE = (
        "obsolete"  # nothing left to do, and some of it because upstream moved on
    )
    UNVERIFIABLE = (
        "unverifiable"  # applies, but the unpatched suite ran nothing to compare
    )
    VERIFY_FAILED = "verify-failed"
    DRIFTED = "drifted"

    @property
    def good(self) -> bool:
        return self in (Verdict.VERIFIED, Verdict.ALREADY_UPSTREAM, Verdict.OBSOLETE)

    @property
    def rank(self) -> int:
        """0 good, then worse: a baseline comparison fails when the rank rises."""
        return {
            Verdict.UNVERIFIABLE: 1,
            Verdict.VERIFY_FAILED: 1,
            Verdict.DRIFTED: 2,
        }.get(self, 0)
