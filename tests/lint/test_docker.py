"""Series 5: the three Dockerfiles pass hadolint, have the structure the series
promises, and .dockerignore shrinks the real build context."""

from __future__ import annotations

import ast
import io
import re
import subprocess
from pathlib import Path

import pathspec
import pytest
from dockerfile_parse import DockerfileParser

from atom_ckfree import upstream
from tests.tools import tool

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

DOCKERFILES = [
    "docker/Dockerfile",
    "docker/Dockerfile.wheels",
    "docker/Dockerfile.clean",
]


def structure(path: Path) -> list[dict]:
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes())).structure


def instructions(path: Path) -> list[tuple[str, str]]:
    return [
        (i["instruction"], " ".join(i["value"].split()))
        for i in structure(path)
        if i["instruction"] != "COMMENT"
    ]


def test_hadolint_passes_on_all_three_dockerfiles(patched_tree):
    result = subprocess.run(
        [tool("hadolint"), "--no-color", *DOCKERFILES],
        cwd=patched_tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # every ignore is justified by a comment right above it
    for name in DOCKERFILES:
        lines = (patched_tree / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint" in line and "ignore=" in line:
                context = lines[i - 1] if i else ""
                follow = lines[i + 1] if i + 1 < len(lines) else ""
                assert context.startswith("#") or follow.startswith(
                    "#"
                ), f"{name}:{i + 1}: unexplained ignore"


def test_dockerfile_ck_is_optional_and_the_default_builds_as_before(
    pin_template, patched_tree
):
    before = instructions(pin_template / "docker/Dockerfile")
    after = instructions(patched_tree / "docker/Dockerfile")
    assert ("ARG", "ENABLE_CK=1") in after
    aiter = [v for k, v in after if k == "RUN" and "git clone $AITER_REPO" in v]
    assert len(aiter) == 1
    build = aiter[0]
    assert after.index(("ARG", "ENABLE_CK=1")) < after.index(("RUN", build))
    conditional = re.search(r'if \[ "\$ENABLE_CK" = "1" \]; then (.*?); fi', build)
    assert conditional and "git submodule update --init --recursive" in conditional[1]
    assert "git submodule" not in build.replace(conditional[0], "")
    assert "ENABLE_CK=$ENABLE_CK " in build and build.endswith(
        "python3 setup.py develop"
    )
    # With ENABLE_CK=1 the step runs the commands it ran before (ENABLE_CK=1 is AITER's default).
    as_before = build.replace(conditional[0], conditional[1]).replace(
        "ENABLE_CK=$ENABLE_CK ", ""
    )
    old = next(v for k, v in before if k == "RUN" and "git clone $AITER_REPO" in v)
    assert as_before == old
    # Every other instruction is still there, in order; triton_kernels is installed.
    rest = [i for i in after if i[1] != build]
    it = iter(rest)
    assert all(any(i == j for j in it) for i in before if i[1] != old)
    assert any(
        k == "RUN" and "triton_kernels" in v and "pip install" in v for k, v in after
    )


def test_wheels_builder_stages_arguments_and_output(patched_tree):
    items = structure(patched_tree / "docker/Dockerfile.wheels")
    stages = [
        re.split(r"\s+AS\s+", i["value"], flags=re.IGNORECASE)[-1]
        for i in items
        if i["instruction"] == "FROM"
    ]
    assert stages == [
        "base",
        "torch",
        "with-torch",
        "triton",
        "flydsl",
        "mori",
        "aiter",
        "wheels",
    ]
    args = {i["value"].split("=", 1)[0] for i in items if i["instruction"] == "ARG"}
    assert {
        "TORCH_VERSION",
        "TRITON_BRANCH",
        "FLYDSL_COMMIT",
        "MORI_COMMIT",
        "AITER_COMMIT",
    } <= args
    assert [i["value"] for i in items if i["instruction"] == "FROM"][
        -1
    ] == "scratch AS wheels"
    copies = [
        i["value"]
        for i in items
        if i["instruction"] == "COPY" and i["value"].endswith("/wheels/ /")
    ]
    assert [c.split()[0] for c in copies] == [
        f"--from={s}" for s in ("torch", "triton", "flydsl", "mori", "aiter")
    ]
    aiter = [
        i["value"]
        for i in items
        if i["instruction"] == "RUN" and "ENABLE_CK" in i["value"]
    ]
    assert len(aiter) == 1 and "ENABLE_CK=0" in aiter[0]
    assert not any(
        "submodule" in i["value"]
        for i in items
        if i["instruction"] == "RUN" and "aiter" in i["value"]
    )
    assert any(
        "TRITON_BRANCH" in i["value"] and "3.5.x" in i["value"]
        for i in items
        if i["instruction"] == "ARG"
    )


def test_clean_image_compiles_nothing_and_mounts_the_wheels(patched_tree):
    items = instructions(patched_tree / "docker/Dockerfile.clean")
    runs = [v for k, v in items if k == "RUN"]
    mounted = [r for r in runs if r.startswith("--mount=type=bind,from=wheels")]
    assert len(mounted) == 1 and "pip install" in mounted[0]
    assert not any(
        re.search(r"\b(git clone|setup\.py|make|cmake|pip wheel)\b", r) for r in runs
    )
    assert ("ENV" in {k for k, _ in items}) and any(
        "ATOM_CK_FREE=1" in v for k, v in items if k == "ENV"
    )


def context(tree: Path, ignore: pathspec.PathSpec | None) -> tuple[int, int]:
    files = bytes_ = 0
    for path in tree.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(tree).as_posix()
        if ignore is not None and ignore.match_file(rel):
            continue
        files += 1
        bytes_ += path.stat().st_size
    return files, bytes_


def test_dockerignore_shrinks_the_real_build_context(pin_template, patched_tree):
    ignore = pathspec.PathSpec.from_lines(
        "gitwildmatch", (patched_tree / ".dockerignore").read_text().splitlines()
    )
    without = context(pin_template, None)
    with_ = context(pin_template, ignore)
    print(
        f"\nbuild context of ATOM at the pin: without .dockerignore {without[0]} files, {without[1]} bytes;"
        f" with it {with_[0]} files, {with_[1]} bytes"
        f" ({100 * (1 - with_[1] / without[1]):.1f}% fewer bytes)"
    )
    assert with_[1] < without[1] and with_[0] < without[0]
    for kept in (
        "pyproject.toml",
        "README.md",
        "atom/__init__.py",
        "docker/Dockerfile.clean",
    ):
        assert not ignore.match_file(kept), kept
    for dropped in (
        ".git/HEAD",
        "build/lib/x.py",
        "dist/atom.whl",
        "atom/__pycache__/a.pyc",
        "a.egg-info/PKG-INFO",
    ):
        assert ignore.match_file(dropped), dropped


def _flydsl_moe_modules() -> tuple[str, ...]:
    """``FLYDSL_MOE_MODULES`` of the overlay's flydsl_moe.py: where ATOM imports
    FlyDSL's MoE kernels from."""
    tree = ast.parse((ROOT / "overlay/atom/model_ops/flydsl_moe.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FLYDSL_MOE_MODULES"
            for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("flydsl_moe.py has no FLYDSL_MOE_MODULES")


def test_the_image_carries_flydsl_moe_kernels_where_atom_imports_them(patched_tree):
    """FlyDSL's wheel has no kernels/ (its setup.py packages python/ only): the
    wheels stage ships its checkout's kernels/ beside the wheels, the clean image puts
    them on PYTHONPATH, and there FlyDSL's real tree has a module flydsl_moe imports."""
    wheels = structure(patched_tree / "docker/Dockerfile.wheels")
    copies = [i["value"].split() for i in wheels if i["instruction"] == "COPY"]
    (kernels,) = [c for c in copies if c[0] == "--from=flydsl" and "kernels" in c[1]]
    source, shipped = kernels[1], kernels[2]  # /src/flydsl/kernels -> /flydsl/kernels
    clone = source.rsplit("/kernels", 1)[0]
    assert any(
        i["instruction"] == "RUN" and "git clone" in i["value"] and clone in i["value"]
        for i in wheels
    ), f"no stage clones FlyDSL into {clone}"
    clean = instructions(patched_tree / "docker/Dockerfile.clean")
    (install,) = [v for k, v in clean if k == "RUN" and "from=wheels" in v]
    copied = re.search(r"cp -r /wheels(/\S+) (\S+)", install)
    assert copied and shipped.startswith(copied[1] + "/"), install
    in_image = copied[2] + shipped[len(copied[1]) :]  # /opt/flydsl/kernels
    paths = [v.split("=", 1)[1] for k, v in clean if k == "ENV" and "PYTHONPATH=" in v]
    assert paths and f"{paths[-1]}/kernels" == in_image, (paths, in_image)

    repo = upstream.cache_repo("flydsl")
    if not (repo / "HEAD").exists():
        pytest.skip(
            f"NO FLYDSL SOURCE: seed {repo} (git clone --bare "
            "https://github.com/ROCm/FlyDSL.git it) to check the kernels' layout"
        )
    files = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "-r", "--name-only", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    importable = {
        name
        for name in _flydsl_moe_modules()
        if f"{name.replace('.', '/')}.py" in files
        or f"{name.replace('.', '/')}/__init__.py" in files
    }
    assert importable, f"none of {_flydsl_moe_modules()} in FlyDSL's kernels/"
