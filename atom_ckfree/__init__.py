"""atom-ckfree: a change set carried onto a moving upstream as ordered semantic patch
series. What the upstream is — URL, bases, how to recognise its tree — is in
``patches/project.toml`` (see :mod:`atom_ckfree.project`)."""
