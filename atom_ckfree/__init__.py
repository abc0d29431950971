"""atom-ckfree: the CK-free change set for ROCm/ATOM as ordered semantic patch series."""

PIN = "87460d31c6d651fb89ef6fcc5bddaece165b7933"
DEFAULT_UPSTREAM = "https://github.com/ROCm/ATOM.git"
