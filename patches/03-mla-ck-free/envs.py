"""The CK-free mode selects upstream's all-Triton MLA where it has one.

``ATOM_USE_TRITON_MLA`` (upstream 77b3d1e) picks ``TritonMLABackend``;
``ATOM_USE_TRITON_MLA_SHUFFLE_KV`` (66ffdcf) makes its cache writes and decode
Triton too (block size 64), so no MLA step reaches ``module_cache``,
``module_mla_metadata`` or ``module_mla_reduce``, which AITER's CK-free build
excludes. In the CK-free mode both default to on; a value in the environment
still wins. At the pin there are no such switches: this series brings its own
Triton decode route (attention_mla.py)."""

import libcst.matchers as m

from atom_ckfree.edits import Obsolete, SetDictEntry, assign, matching, missing

NOT_YET = "no such switch here: upstream 77b3d1e/66ffdcf added TritonMLABackend"


def lacks(name: str):
    switch = matching(
        m.DictElement(key=m.SimpleString(f'"{name}"')), f"the switch {name}"
    )
    return missing("", switch)


def default_on_when_ck_free(name: str):
    return Obsolete(
        SetDictEntry(
            f"envs.{name.lower().replace('_', '-')}-ck-free-default",
            scope="",
            anchor=assign("environment_variables"),
            key=f'"{name}"',
            value=f'lambda: os.getenv("{name}", "1" if ck_free_mode() else "0") == "1"',
        ),
        lacks(name),
        NOT_YET,
    )


EDITS = [
    default_on_when_ck_free("ATOM_USE_TRITON_MLA"),
    default_on_when_ck_free("ATOM_USE_TRITON_MLA_SHUFFLE_KV"),
]
