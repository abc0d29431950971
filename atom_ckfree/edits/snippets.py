"""Code an edit inserts, kept in a file of its own beside the edit.

Code that must sit inside an upstream function (or in the upstream module's own
namespace) cannot live in an overlay module; it lives in
``patches/NN-slug/snippets/``, as a real file that linters, formatters and
reviewers read directly, and the edit takes its text from there.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SeriesError


def snippet(edits_module: str, name: str) -> str:
    """The text of ``snippets/name`` in the folder of ``edits_module`` (pass
    ``__file__`` of the series' edits module)."""
    path = Path(edits_module).parent / "snippets" / name
    try:
        return path.read_text()
    except OSError as error:
        raise SeriesError(
            f"{path}: cannot read the snippet ({error.strerror})"
        ) from error
