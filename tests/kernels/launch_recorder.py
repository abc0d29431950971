"""Record the Triton launches a piece of host code makes, without a GPU.

Inside :func:`recording`, every ``kernel[grid](...)`` (and the ``run`` an
autotuner or ``triton.heuristics`` wrapper makes) is recorded instead of compiled
and launched, so the host code's own selection logic decides what is built. The
host code runs on ``meta`` tensors: shapes and dtypes only, no memory, no device.

A recorded :class:`Launch` turns into what ``triton.compile`` takes for one
backend with :meth:`Launch.source` — the argument types and the specialisations
Triton's launcher would make (integers equal to 1 become constants; pointers and
integers get the backend's divisibility / pointer-range attributes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, mangle_type


@dataclass
class Launch:
    kernel: JITFunction
    args: dict  # parameter name -> value, defaults applied
    options: dict  # num_warps, num_stages, waves_per_eu, ...
    origin: str = ""  # what launched it (for reports)
    key: tuple = field(init=False)

    def __post_init__(self):
        self.key = (
            self.kernel.fn.__qualname__,
            _shape_key(self.kernel.params, self.args),
            _items(self.options),
        )

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def source(self, backend) -> ASTSource:
        """The ASTSource of this launch as ``backend`` (a Triton backend) builds it."""
        signature, constexprs, attrs = {}, {}, {}
        for i, (name, value) in enumerate(self.args.items()):
            param = self.kernel.params[i]
            if param.is_constexpr or value is None or _is_one(value, param):
                signature[name] = "constexpr"
                constexprs[(i,)] = value
                continue
            signature[name] = mangle_type(value)
            if isinstance(value, torch.Tensor):
                desc = backend.get_tensor_specialization(value, align=True)
            elif isinstance(value, int) and not isinstance(value, bool):
                desc = backend.get_int_specialization(value, align=True)
            else:
                desc = ""
            if desc and not param.do_not_specialize:
                attrs[(i,)] = backend.parse_attr(desc)
        if self.kernel.is_gluon():
            from triton.experimental.gluon import GluonASTSource as source
        else:
            source = ASTSource
        return source(
            fn=self.kernel, signature=signature, constexprs=constexprs, attrs=attrs
        )


def _is_one(value, param) -> bool:
    # Triton's launcher turns an integer argument equal to 1 into a constant.
    return type(value) is int and value == 1 and not param.do_not_specialize


def _shape_key(params, args: dict) -> tuple:
    # What decides the compiled code: constexpr values, dtypes, and for integer
    # arguments only whether they become constants (1) - not the sizes
    # themselves, nor their divisibility by 16 (an alignment hint for the loads,
    # not a different tile, pipeline or LDS layout; kept out so that each
    # selected configuration is built once, with the hints of its first launch).
    out = []
    for param, (name, v) in zip(params, args.items()):
        if isinstance(v, torch.Tensor):
            out.append((name, str(v.dtype)))
        elif type(v) is int and not param.is_constexpr:
            out.append((name, "1" if v == 1 else "i"))
        else:
            out.append((name, repr(v)))
    return tuple(out)


def _items(d: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


@contextlib.contextmanager
def recording(origin: str = ""):
    """Collect the launches made inside the block (a list, filled in place)."""
    launches: list[Launch] = []
    real_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = {p.name for p in self.params}
        options = {k: v for k, v in kwargs.items() if k not in params}
        bound = self.signature.bind(
            *args, **{k: v for k, v in kwargs.items() if k in params}
        )
        bound.apply_defaults()
        launches.append(Launch(self, dict(bound.arguments), options, origin))

    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = real_run


def unique(launches: list[Launch]) -> list[Launch]:
    """One launch per distinct compiled kernel, in first-seen order."""
    seen: dict[tuple, Launch] = {}
    for launch in launches:
        seen.setdefault(launch.key, launch)
    return list(seen.values())
