"""The report words: members print and serialise as their words."""

import json

from atom_ckfree.states import Outcome, Verdict


def test_members_print_and_serialise_as_their_words():
    assert f"{Outcome.ALREADY_APPLIED}" == "already applied"
    assert str(Verdict.VERIFIED) == "applied+verified"
    assert f"{Outcome.APPLIED:>9}" == "  applied"
    assert json.dumps({"outcome": Outcome.WOULD_APPLY}) == '{"outcome": "would apply"}'
    assert Outcome("skipped") is Outcome.SKIPPED


def test_verdicts_rank_good_then_unverified_or_failed_then_drifted():
    """Unverifiable is never good (a suite that ran nothing proves nothing), and
    ranks with verify-failed: a baseline comparison notices either."""
    assert [v.good for v in Verdict] == [True, True, True, False, False, False]
    assert [v.rank for v in Verdict] == [0, 0, 0, 1, 1, 2]
