"""Edit primitives for Dockerfiles (format ``text``), anchored on dockerfile-parse's
instruction structure.

An anchor is an :class:`Instruction` matcher: a keyword (``RUN``, ``ARG`` …) and
optionally text the instruction's value contains (continuation lines joined,
whitespace collapsed) and/or the build stage it must be in. The file is read into
instructions with their line ranges; an edit splices whole lines at an instruction's
boundary, so every other byte of the file is kept. Whether an edit is already made is
decided on the parsed instructions (and comments) too, never on raw-text patterns.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

from dockerfile_parse import DockerfileParser

from ..errors import SeriesError
from .base import Conflict, Edit


def _norm(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


@dataclass(frozen=True)
class Entry:
    """One instruction (or comment line) of a Dockerfile, as dockerfile-parse sees it."""

    keyword: str  # RUN, ARG, …, or COMMENT
    value: str  # normalised
    first: int  # 0-based first line
    last: int  # 0-based last line
    stage: int  # index of the FROM it follows (-1 before the first FROM)
    stage_name: str | None = None  # that FROM's ``AS name``

    def in_stage(self, stage: int | str) -> bool:
        return (
            self.stage == stage if isinstance(stage, int) else self.stage_name == stage
        )

    @property
    def key(self) -> tuple[str, str]:
        return self.keyword, self.value


def parse(text: str) -> list[Entry]:
    parser = DockerfileParser(
        fileobj=io.BytesIO(text.encode())
    )  # never touches the disk
    entries, stage, name = [], -1, None
    for item in parser.structure:
        keyword = item["instruction"].upper()
        if keyword == "FROM":
            stage += 1
            words = item["value"].split()
            named = len(words) >= 3 and words[-2].upper() == "AS"
            name = words[-1] if named else None
        entries.append(
            Entry(
                keyword,
                _norm(item["value"]),
                item["startline"],
                item["endline"],
                stage,
                name,
            )
        )
    return entries


@dataclass(frozen=True)
class Instruction:
    """Matches instructions by keyword, text their value contains, and stage (its
    number, or the name its ``FROM … AS name`` gives it)."""

    keyword: str
    contains: str = ""
    stage: int | str | None = None

    def matches(self, entry: Entry) -> bool:
        return (
            entry.keyword == self.keyword.upper()
            and _norm(self.contains) in entry.value
            and (self.stage is None or entry.in_stage(self.stage))
        )

    def __str__(self) -> str:
        text = self.keyword.upper()
        if self.contains:
            text += f" containing {self.contains!r}"
        if self.stage is not None:
            text += f" in stage {self.stage!r}"
        return text


def _arg_name(entry: Entry) -> str:
    return entry.value.split("=", 1)[0].strip()


def _arg_default(entry: Entry) -> str | None:
    if "=" not in entry.value:
        return None
    return entry.value.split("=", 1)[1].strip().strip("\"'")


class DockerfileEdit(Edit):
    format = "text"

    def find(self, text: str, entries: list[Entry], anchor: Instruction) -> Entry:
        hits = [e for e in entries if anchor.matches(e)]
        if len(hits) == 1:
            return hits[0]
        found = (
            "none in the file"
            if not hits
            else f"{len(hits)} of them (lines {', '.join(str(h.first + 1) for h in hits)})"
        )
        line = hits[1].first + 1 if hits else None
        raise Conflict(self.id, f"exactly one {anchor}", found, line)


def _payload(code: str) -> tuple[str, list[tuple[str, str]]]:
    """The lines to splice in (dedented, newline-terminated) and their parsed entries."""
    block = textwrap.dedent(code).strip("\n") + "\n"
    return block, [e.key for e in parse(block)]


def _contains_run(entries: list[Entry], payload: list[tuple[str, str]]) -> bool:
    keys = [e.key for e in entries]
    n = len(payload)
    return n > 0 and any(keys[i : i + n] == payload for i in range(len(keys) - n + 1))


def _splice(
    text: str, at_line: int, block: str, remove_through: int | None = None
) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n") and at_line >= len(lines):
        lines[-1] += "\n"
    end = at_line if remove_through is None else remove_through + 1
    lines[at_line:end] = block.splitlines(keepends=True)
    return "".join(lines)


class InsertInstructions(DockerfileEdit):
    """Insert ``code`` (instructions and comments) right after or before the
    instruction matched by the anchor. Already applied when the same instructions and
    comments stand consecutively anywhere in the file."""

    def __init__(
        self,
        id: str,
        code: str,
        *,
        after: Instruction | None = None,
        before: Instruction | None = None,
    ):
        super().__init__(id)
        if (after is None) == (before is None):
            raise SeriesError(f"{id}: give exactly one of after=, before=")
        self.after, self.before = after, before
        self.block, self.payload = _payload(code)

    def apply(self, doc: str) -> tuple[str, bool]:
        entries = parse(doc)
        if _contains_run(entries, self.payload):
            return doc, False
        anchor = self.find(doc, entries, self.after or self.before)
        at = anchor.last + 1 if self.after else anchor.first
        if self.before:
            # keep the anchor's own comment lines with it
            index = entries.index(anchor)
            while (
                index > 0
                and entries[index - 1].keyword == "COMMENT"
                and entries[index - 1].last == at - 1
            ):
                index -= 1
                at = entries[index].first
        return _splice(doc, at, self.block), True


class ReplaceInstruction(DockerfileEdit):
    """Replace the instruction matched by ``anchor`` with ``code``. Already applied
    when ``code``'s instructions stand in the file (the anchor may match them too)."""

    def __init__(self, id: str, anchor: Instruction, code: str):
        super().__init__(id)
        self.anchor = anchor
        self.block, self.payload = _payload(code)

    def apply(self, doc: str) -> tuple[str, bool]:
        entries = parse(doc)
        if _contains_run(entries, self.payload):
            return doc, False
        target = self.find(doc, entries, self.anchor)
        return _splice(doc, target.first, self.block, remove_through=target.last), True


class AddArg(DockerfileEdit):
    """Declare ``ARG name[=default]`` once in a stage (its number, or its name in a
    multi-stage file): after the instruction matched by ``after``, or after the
    stage's last ARG. Already applied when the stage declares
    the argument with that default; a different default is a conflict. ``comment``
    lines go right above the new ARG."""

    def __init__(
        self,
        id: str,
        name: str,
        default: str | None = None,
        *,
        after: Instruction | None = None,
        stage: int | str = 0,
        comment: str = "",
    ):
        super().__init__(id)
        self.name, self.default, self.after, self.stage = name, default, after, stage
        self.comment = textwrap.dedent(comment).strip("\n")

    def apply(self, doc: str) -> tuple[str, bool]:
        entries = parse(doc)
        stage = [e for e in entries if e.in_stage(self.stage)]
        if not any(e.keyword == "FROM" for e in stage):
            names = [
                e.stage_name or str(e.stage) for e in entries if e.keyword == "FROM"
            ]
            raise Conflict(
                self.id,
                f"a build stage {self.stage!r}",
                f"the stages {names}" if names else "no FROM",
                None,
            )
        declared = [
            e for e in stage if e.keyword == "ARG" and _arg_name(e) == self.name
        ]
        for e in declared:
            if _arg_default(e) == self.default:
                return doc, False
            if _arg_default(e) is not None:
                raise Conflict(
                    self.id,
                    f"ARG {self.name} absent or ={self.default}",
                    f"ARG {e.value}",
                    e.first + 1,
                )
        if declared:  # declared without a default: give it ours there
            raise Conflict(
                self.id,
                f"ARG {self.name} absent or ={self.default}",
                f"ARG {declared[0].value}",
                declared[0].first + 1,
            )
        if self.after is not None:
            anchor = self.find(doc, stage, self.after)
        else:
            args = [e for e in stage if e.keyword == "ARG"] or [
                e for e in stage if e.keyword == "FROM"
            ]
            anchor = args[-1]
        value = self.name if self.default is None else f"{self.name}={self.default}"
        lines = (
            "".join(f"{line}\n" for line in self.comment.splitlines())
            + f"ARG {value}\n"
        )
        return _splice(doc, anchor.last + 1, lines), True
