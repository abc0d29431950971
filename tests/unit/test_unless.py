"""Unless: an edit that stands down when its effect is already there in another form."""

from atom_ckfree.edits import FORMATS, Conflict, SetEntry, Unless

TEXT = "jobs:\n  lint:\n    runs-on: ubuntu-latest\n"


def test_applies_when_the_effect_is_absent_and_stands_down_when_present():
    edit = SetEntry("e", ("jobs", "lint"), "timeout-minutes", 30)
    never = Unless(edit, lambda doc: False)
    doc, changed = never.apply(FORMATS["yaml"].parse(TEXT))
    assert changed and "timeout-minutes: 30" in FORMATS["yaml"].render(doc)

    always = Unless(edit, lambda doc: "lint" in doc["jobs"])
    doc, changed = always.apply(FORMATS["yaml"].parse(TEXT))
    assert not changed and FORMATS["yaml"].render(doc) == TEXT
    assert always.id == "e" and always.format == "yaml"


def test_a_conflict_while_looking_means_not_present():
    edit = SetEntry("e", ("jobs", "lint"), "timeout-minutes", 30)

    def looks_elsewhere(doc):
        raise Conflict("e", "a job build", "none")

    _, changed = Unless(edit, looks_elsewhere).apply(FORMATS["yaml"].parse(TEXT))
    assert changed
