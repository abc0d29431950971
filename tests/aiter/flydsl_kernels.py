"""FlyDSL's two-stage MoE GEMM builders as torch stand-ins, held to FlyDSL's real source.

FlyDSL compiles for CDNA GPUs only, so its kernels cannot run here. Its source can be
read: the tool's companion cache ``~/.cache/atom-ckfree/flydsl.git`` (bare; FlyDSL
``main``, what ATOM's image builds: ``Dockerfile.wheels`` ``FLYDSL_COMMIT=main``). From
it the stand-ins take, with ``ast`` (nothing of FlyDSL is copied or run):

* the keyword-only signature of ``compile_moe_gemm1`` / ``compile_moe_gemm2``
  (``kernels/moe/moe_gemm_2stage/gemm{1,2}.py``): a call with a name FlyDSL does not
  have, or without one it needs, raises ``TypeError`` as the real builder would;
* the shape asserts at the top of the kernel builders they call (tile sizes,
  divisibility of the model and intermediate dims), evaluated on each build;
* the parameter names of the launchers they return (``launch_moe_gemm1`` /
  ``launch_moe_gemm2``): the positional arguments are bound to those names, and the
  torch computation reads each tensor through the name FlyDSL gives its slot (the
  ``stream`` slot as ``fx.Stream`` takes it, ``python/flydsl/expr/typing.py``: None,
  a raw int or a torch stream).

What each slot holds is FlyDSL's documented contract, written here in torch:

* ``moe_gemm1_fp8_gateup``: ``out[t, slot, :] = silu(gate * sx * sw_g) * (up * sx *
  sw_u)`` (its docstring), ``gate``/``up`` the dot products of the FP8 activation row
  ``arg_x[t]`` with the gate rows ``[0, inter)`` and up rows ``[inter, 2 inter)`` of
  the expert's weight (``make_gateup_weight_view``), ``sx = arg_scale_x[t]`` (one per
  token) and ``sw = arg_scale_w[expert * 2 inter + channel]`` (``_apply_dequant``);
  the routing weight multiplies the gate only with ``doweight_stage1``;
* ``moe_gemm2``: ``(A2 @ W2^T) * a_scale * w_scale`` (its docstring), A2 rows
  ``token * topk + slot`` (the rank-3 ``[tokens, topk, inter]`` view), ``a_scale`` at
  the same row, ``w_scale = arg_scale_w[expert * model_dim + channel]``, the routing
  weight with ``doweight_stage2``; ``accumulate`` adds into ``[tokens, model_dim]``,
  else one row per (token, slot) in ``[tokens, topk, model_dim]``;
* weights in FlyDSL's pre-shuffled layout: element ``(n, k)`` of an expert's ``[N,
  K]`` matrix at ``(n % 16) * e + (n // 16) * 16 * K + k % e + (k // e) * 16 * e``,
  ``e = 16`` bytes (``layout_helpers.make_weight_view``);
* routing tables in the CK/FlyDSL ``moe_sorting`` encoding: blocks ``b`` with ``b *
  tile_m < arg_max_token_ids[0]`` (``arg_num_valid_ids``) run, their rows
  ``(slot << 24) | token``, a token ``>= tokens`` is padding (dropped).

FP8 bytes are decoded with the dtype of the tensor handed over (FlyDSL names its
element type ``Float8E4M3FNUZ`` for both CDNA3 and CDNA4).
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from atom_ckfree import upstream

PACKAGE = "kernels.moe.moe_gemm_2stage"
SOURCES = {
    "compile_moe_gemm1": ("kernels/moe/moe_gemm_2stage/gemm1.py", "launch_moe_gemm1"),
    "compile_moe_gemm2": ("kernels/moe/moe_gemm_2stage/gemm2.py", "launch_moe_gemm2"),
}
TOKEN_MASK = (1 << 24) - 1
SHUFFLE_BYTES = 16  # the pre-shuffled layout's 16-byte row chunks and 16-row tiles
OUT_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def flydsl_source(path: str) -> str:
    """``path`` of FlyDSL ``main`` from the companion cache; skips loudly without it."""
    repo = upstream.cache_repo("flydsl")
    if not (repo / "HEAD").exists():
        pytest.skip(
            f"NO FLYDSL SOURCE: seed {repo} (git clone --bare "
            "https://github.com/ROCm/FlyDSL.git it) to check the MoE GEMM contract"
        )
    return subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"main:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _function(tree: ast.AST, name: str) -> ast.FunctionDef:
    found = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name
    ]
    assert len(found) == 1, f"FlyDSL's source has {len(found)} functions {name}"
    return found[0]


def _builder_signature(node: ast.FunctionDef) -> inspect.Signature:
    """The keyword-only parameters of a builder, with which have defaults."""
    assert not node.args.args, f"{node.name} takes positional arguments now"
    defaults = node.args.kw_defaults
    return inspect.Signature(
        [
            inspect.Parameter(
                a.arg,
                inspect.Parameter.KEYWORD_ONLY,
                default=(
                    inspect.Parameter.empty
                    if d is None
                    else ast.literal_eval(d)  # constants in FlyDSL's source
                ),
            )
            for a, d in zip(node.args.kwonlyargs, defaults)
        ]
    )


class Contract:
    """What FlyDSL's source says of one builder: its signature, the shape asserts
    of the kernel builder it calls, its launcher's parameter names."""

    def __init__(self, builder: str):
        path, launcher = SOURCES[builder]
        tree = ast.parse(flydsl_source(path))
        self.builder = builder
        self.path = path
        self.signature = _builder_signature(_function(tree, builder))
        (kernel_builder,) = [
            n.func.id
            for n in ast.walk(_function(tree, builder))
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id.startswith("_build_")
        ]
        self.builder_body = _function(tree, kernel_builder).body
        self.launcher_params = [a.arg for a in _function(tree, launcher).args.args]


_PLAIN_BUILTINS = {"int": int, "max": max, "min": min, "str": str, "bool": bool}


def check_shape_asserts(contract: Contract, config: dict) -> None:
    """Run the ``assert`` statements at the top of FlyDSL's kernel builder (tile
    and divisibility constraints) on ``config``: its plain assignments are
    evaluated in order (``K = int(model_dim)`` ...); one that needs FlyDSL itself
    (``fx.``, the GPU's arch) leaves its name unknown, and an assert naming an
    unknown is left out."""
    env = {"__builtins__": _PLAIN_BUILTINS, **config}
    where = contract.path
    for stmt in contract.builder_body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                try:
                    env[target.id] = eval(
                        compile(ast.Expression(stmt.value), where, "eval"), env
                    )
                except (NameError, AttributeError):
                    env.pop(target.id, None)
        elif isinstance(stmt, ast.Assert):
            try:
                holds = eval(compile(ast.Expression(stmt.test), where, "eval"), env)
            except NameError:
                continue
            if not holds:
                message = stmt.msg and eval(
                    compile(ast.Expression(stmt.msg), where, "eval"), env
                )
                raise AssertionError(f"FlyDSL {where}:{stmt.lineno}: {message}")


def _dense_weight(flat: torch.Tensor, experts: int, n: int, k: int) -> torch.Tensor:
    """``[E, N, K]`` float32 of a flat pre-shuffled weight (``make_weight_view``)."""
    assert (
        flat.dim() == 1 and flat.numel() == experts * n * k
    ), f"weight slot holds {tuple(flat.shape)}, want flat [{experts} * {n} * {k}]"
    e = SHUFFLE_BYTES // flat.element_size()
    rows = torch.arange(n, device=flat.device)[:, None]
    cols = torch.arange(k, device=flat.device)[None, :]
    index = (rows % 16) * e + (rows // 16) * 16 * k + cols % e + (cols // e) * 16 * e
    per_expert = flat.reshape(experts, n * k).float()
    return per_expert[:, index.reshape(-1)].reshape(experts, n, k)


def _rows(args: dict, tile_m: int, tokens: int, topk: int, valid_key: str):
    """(block expert, token, slot, sorted position) of every routed row that runs."""
    count = int(args[valid_key][0])
    ids = args["arg_sorted_token_ids"]
    experts = args["arg_expert_ids"]
    for b in range(int(args["i32_size_expert_ids_in"])):
        if b * tile_m >= count:
            continue
        expert = int(experts[b])
        for pos in range(b * tile_m, (b + 1) * tile_m):
            packed = int(ids[pos])
            token, slot = packed & TOKEN_MASK, packed >> 24
            if token < tokens:
                assert slot < topk, f"sorted row {pos}: slot {slot} >= topk {topk}"
                yield expert, token, slot, pos


def _bind(contract: Contract, args: tuple) -> dict:
    assert len(args) == len(contract.launcher_params), (
        f"{contract.builder}'s launcher takes {contract.launcher_params}, "
        f"got {len(args)} arguments"
    )
    bound = dict(zip(contract.launcher_params, args))
    stream = bound["stream"]  # fx.Stream takes None, a raw int or a torch stream
    assert stream is None or isinstance(stream, int) or hasattr(stream, "cuda_stream")
    return bound


def _gemm1(contract: Contract, cfg: dict):
    K, inter, E, T = cfg["model_dim"], cfg["inter_dim"], cfg["experts"], cfg["topk"]
    out_dtype = OUT_DTYPES[cfg["out_dtype"]]

    def launch(*args):
        a = _bind(contract, args)
        M = int(a["i32_tokens_in"])
        assert (
            int(a["i32_inter_in"]) == inter and int(a["i32_k_in"]) == K
        ), "gemm1 launch dims (inter, K) differ from the compiled ones"
        out, x = a["arg_out"], a["arg_x"]
        assert out.dtype == out_dtype and out.numel() == M * T * inter
        assert x.dim() == 1 and x.numel() == M * K and x.element_size() == 1
        w = _dense_weight(a["arg_w"], E, 2 * inter, K)
        sx, sw = a["arg_scale_x"].float(), a["arg_scale_w"].float()
        assert sx.numel() == M and sw.numel() == E * 2 * inter
        sw = sw.reshape(E, 2 * inter)
        xf = x.reshape(M, K).float()
        view = out.view(M, T, inter)
        for e, t, s, pos in _rows(a, cfg["tile_m"], M, T, "arg_max_token_ids"):
            acc = (w[e] @ xf[t]) * sx[t] * sw[e]
            gate, up = acc[:inter], acc[inter:]
            if cfg["doweight_stage1"]:
                gate = gate * a["arg_sorted_weights"][pos]
            view[t, s] = (F.silu(gate) * up).to(out_dtype)

    return launch


def _gemm2(contract: Contract, cfg: dict):
    N, K, E, T = cfg["model_dim"], cfg["inter_dim"], cfg["experts"], cfg["topk"]
    out_dtype = OUT_DTYPES[cfg["out_dtype"]]

    def launch(*args):
        a = _bind(contract, args)
        tokens = int(a["i32_tokens_in"])
        assert (
            int(a["i32_n_in"]) == N and int(a["i32_k_in"]) == K
        ), "gemm2 launch dims (model_dim, inter) differ from the compiled ones"
        out, x = a["arg_out"], a["arg_x"]
        rows = tokens if cfg["accumulate"] else tokens * T
        assert out.dtype == out_dtype and out.numel() == rows * N
        assert x.dim() == 1 and x.numel() == tokens * T * K and x.element_size() == 1
        w = _dense_weight(a["arg_w"], E, N, K)
        sx, sw = a["arg_scale_x"].float(), a["arg_scale_w"].float()
        assert sx.numel() == tokens * T and sw.numel() == E * N
        sw = sw.reshape(E, N)
        xf = x.reshape(tokens * T, K).float()
        view = out.view(rows, N)
        for e, t, s, pos in _rows(a, cfg["tile_m"], tokens, T, "arg_num_valid_ids"):
            row = t * T + s
            y = (w[e] @ xf[row]) * sx[row] * sw[e]
            if cfg["doweight_stage2"]:
                y = y * a["arg_sorted_weights"][pos]
            if cfg["accumulate"]:
                view[t] += y.to(out_dtype)
            else:
                view[row] = y.to(out_dtype)

    return launch


def _builder(name: str, make):
    contract = Contract(name)

    def build(*args, **kwargs):
        assert not args, f"{name} takes keyword arguments only"
        bound = contract.signature.bind(**kwargs)  # TypeError, as FlyDSL's would
        bound.apply_defaults()
        cfg = dict(bound.arguments)
        assert cfg["in_dtype"] == "fp8", cfg["in_dtype"]
        check_shape_asserts(contract, cfg)
        build.calls.append(cfg)
        return make(contract, cfg)

    build.calls = []
    return build


def install(monkeypatch) -> types.ModuleType:
    """``kernels.moe.moe_gemm_2stage`` (the module ATOM's flydsl_moe imports first)
    with the stand-in builders; ``.compile_moe_gemm1.calls`` lists each build."""
    module = types.ModuleType(PACKAGE)
    module.compile_moe_gemm1 = _builder("compile_moe_gemm1", _gemm1)
    module.compile_moe_gemm2 = _builder("compile_moe_gemm2", _gemm2)
    parts = PACKAGE.split(".")
    for i in range(1, len(parts)):
        package = types.ModuleType(".".join(parts[:i]))
        package.__path__ = []
        monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(sys.modules, PACKAGE, module)
    return module
