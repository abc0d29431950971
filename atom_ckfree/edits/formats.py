"""How each kind of file is parsed into the document its edits work on, and back."""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable
from typing import Any, NamedTuple

import black
import libcst as cst
import tomlkit
from ruamel.yaml import YAML


class Format(NamedTuple):
    parse: Callable[[str], Any]
    render: Callable[[Any], str]
    # (original text, rendered text) -> text to write
    finish: Callable[[str, str], str] = lambda original, rendered: rendered


def _black_like_the_original(original: str, rendered: str) -> str:
    """Format our inserted code with black when the file already was black-clean:
    black leaves the untouched (already formatted) code as it is, and the project's
    style gate stays green. Files that aren't black-clean are left as rendered."""
    mode = black.Mode()
    try:
        if black.format_str(original, mode=mode) != original:
            return rendered
        return black.format_str(rendered, mode=mode)
    except black.InvalidInput:
        return rendered


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines (run: scripts, expressions)
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _keep_original_whitespace(original: str, rendered: str) -> str:
    """ruamel re-emits whitespace-only lines inside block scalars (``run: |``) without
    their spaces. Where a rendered line differs from the original only in trailing
    whitespace, and the two texts line up there, the original line is kept: every line
    an edit did not touch comes back byte for byte."""
    old, new = original.splitlines(keepends=True), rendered.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(
        None,
        [line.rstrip() for line in old],
        [line.rstrip() for line in new],
        autojunk=False,
    )
    out: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        out.extend(old[i1:i2] if tag == "equal" else new[j1:j2])
    for i in range(len(out) - 1):  # an original last line without newline, now followed
        if not out[i].endswith("\n"):
            out[i] += "\n"
    return "".join(out)


def _yaml_parse(text: str) -> Any:
    return _yaml().load(text)


def _yaml_render(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


FORMATS: dict[str, Format] = {
    "python": Format(
        cst.parse_module, lambda module: module.code, _black_like_the_original
    ),
    "yaml": Format(_yaml_parse, _yaml_render, _keep_original_whitespace),
    "toml": Format(tomlkit.parse, tomlkit.dumps),
    "text": Format(str, str),
}
