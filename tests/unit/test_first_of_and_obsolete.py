"""FirstOf: one change written for two upstreams; Obsolete: an edit whose target
upstream removed, reported with the commit that did it — through the sweep too."""

from __future__ import annotations

import pytest

from atom_ckfree import sweep
from atom_ckfree.edits import (
    FORMATS,
    AddElse,
    Conflict,
    FirstOf,
    Moot,
    Obsolete,
    if_test,
)
from atom_ckfree.engine import plan_series
from atom_ckfree.series import load_all

from .conftest import MODULE, git

RENAMED = MODULE.replace("def step", "def advance")


def default_mode(scope: str) -> AddElse:
    return AddElse(
        "engine.default-mode", scope, if_test('batch.kind == "prefill"'), "mode = 0"
    )


def apply(edit, text: str):
    python = FORMATS["python"]
    doc, changed = edit.apply(python.parse(text))
    return python.render(doc), changed


def test_the_first_alternative_that_fits_makes_the_change():
    edit = FirstOf(
        "engine.default-mode",
        default_mode("Engine.step"),
        default_mode("Engine.advance"),
    )
    for text in (MODULE, RENAMED):
        after, changed = apply(edit, text)
        assert changed and "else:\n            mode = 0" in after
        assert apply(edit, after) == (after, False)  # idempotent on either form


def test_when_none_fits_the_first_alternatives_conflict_is_reported():
    edit = FirstOf(
        "engine.default-mode",
        default_mode("Engine.step"),
        default_mode("Engine.run"),
    )
    with pytest.raises(Conflict) as raised:
        apply(edit, MODULE.replace("def step", "def other"))
    assert raised.value.edit_id == "engine.default-mode"
    assert "'Engine.step'" in str(raised.value) or "step" in raised.value.expected


def test_alternatives_of_different_formats_are_refused():
    from atom_ckfree.edits import SetEntry

    with pytest.raises(ValueError, match="one format"):
        FirstOf("x", default_mode("Engine.step"), SetEntry("y", ("a",), "b", 1))


def test_obsolete_names_the_evidence_and_otherwise_applies():
    evidence = "upstream abc123 removed the mode"
    edit = Obsolete(
        default_mode("Engine.step"),
        lambda doc: doc is None or "mode" not in doc.code,
        evidence,
    )
    _, changed = apply(edit, MODULE)
    assert changed

    with pytest.raises(Moot) as raised:
        apply(edit, "class Engine:\n    pass\n")
    assert raised.value.evidence == evidence


@pytest.fixture
def obsolete_series(project):
    """Series 1's edit as Obsolete when Engine.step no longer branches on the kind."""
    edits = project / "patches" / "01-first" / "engine.py"
    edits.write_text(
        "from atom_ckfree.edits import AddElse, Obsolete, if_test\n\n"
        "EDITS = [\n"
        "    Obsolete(\n"
        '        AddElse("engine.default-mode", "Engine.step",'
        ' if_test(\'batch.kind == "prefill"\'), "mode = 0"),\n'
        '        lambda doc: doc is None or "batch.kind" not in doc.code,\n'
        '        "upstream 0000000 made step branch-free",\n'
        "    ),\n"
        "]\n"
    )
    # series 2 logs the mode; drop its dependence on the branch for this test
    (project / "patches" / "02-second" / "series.toml").unlink()
    return project


def test_the_sweep_reports_a_series_whose_edits_are_moot_as_obsolete(
    obsolete_series, atom
):
    (atom / "atom" / "engine.py").write_text(
        "class Engine:\n    def step(self, batch):\n        return 1\n"
    )
    git(atom, "commit", "-qam", "step no longer branches")
    head = git(atom, "rev-parse", "HEAD").strip()
    moot = ["engine.default-mode: upstream 0000000 made step branch-free"]
    # its overlay file still lands: applied, with the moot edit named
    (report,) = sweep.sweep(atom, [head], load_all(), ("compile",))
    (verdict,) = report.verdicts
    assert verdict.verdict == "applied+verified" and verdict.obsolete_edits == moot
    # with the overlay file upstream too, nothing is left: obsolete, a good verdict
    (atom / "atom" / "extra.py").write_text("EXTRA = 1\n")
    git(atom, "add", "-A")
    git(atom, "commit", "-qm", "upstream has extra.py")
    head = git(atom, "rev-parse", "HEAD").strip()
    (report,) = sweep.sweep(atom, [head], load_all(), ("compile",))
    (verdict,) = report.verdicts
    assert verdict.verdict == "obsolete" and verdict.verdict.good
    assert verdict.obsolete_edits == moot


def test_an_edit_of_a_deleted_file_can_be_obsolete(obsolete_series, atom):
    git(atom, "rm", "-q", "atom/engine.py")
    git(atom, "commit", "-qm", "engine removed")
    (series,) = load_all()
    plan = plan_series(
        series,
        lambda path: (atom / path).read_text() if (atom / path).exists() else None,
    )
    states = {u.id: u.state for u in plan.units}
    assert states["engine.default-mode"] == "obsolete"
