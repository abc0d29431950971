"""How each kind of file is parsed into the document its edits work on, and back."""

from __future__ import annotations

import io
from typing import Any, Callable, NamedTuple

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


def _yaml_parse(text: str) -> Any:
    return _yaml().load(text)


def _yaml_render(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


FORMATS: dict[str, Format] = {
    "python": Format(cst.parse_module, lambda module: module.code, _black_like_the_original),
    "yaml": Format(_yaml_parse, _yaml_render),
    "toml": Format(tomlkit.parse, tomlkit.dumps),
    "text": Format(str, str),
}
