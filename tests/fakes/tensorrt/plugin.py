"""CONTRACT-TEST STAND-IN for `tensorrt.plugin` (quickly deployable plugins): the decorators,
descriptors and symbolic expressions stable_audio_rt uses, per the TensorRT Python API docs
(docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/tensorrt.plugin/...).
Shape expressions carry a concrete value here so tests can check what a plugin computes;
`is_constant` marks the build-time constants as TensorRT would.
"""

import inspect
import typing

REGISTRY: dict[str, dict] = {}


class ShapeExpr:
    """.../tensorrt.plugin/Shape/ShapeExpr.html: is_constant, constant_value(), arithmetic."""

    def __init__(self, value: int, constant: bool = True) -> None:
        self.value, self._constant = int(value), constant

    @property
    def is_constant(self) -> bool:
        return self._constant

    def constant_value(self) -> int:
        if not self._constant:
            raise RuntimeError("not a build-time constant")
        return self.value

    def _op(self, other, fn):
        o = other if isinstance(other, ShapeExpr) else ShapeExpr(other)
        return ShapeExpr(fn(self.value, o.value), self._constant and o._constant)

    def __add__(self, other):
        return self._op(other, lambda a, b: a + b)

    def __mul__(self, other):
        return self._op(other, lambda a, b: a * b)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        return self._op(other, lambda a, b: a // b)


def cdiv(a, b) -> ShapeExpr:
    """.../tensorrt.plugin/trt_plugin_cdiv: ceiling division of shape expressions."""
    a = a if isinstance(a, ShapeExpr) else ShapeExpr(a)
    return a._op(b, lambda x, y: -(-x // y))


class ShapeExprs(tuple):
    def numel(self) -> ShapeExpr:
        out = ShapeExpr(1)
        for e in self:
            out = out * e
        return out


class TensorDesc:
    """.../tensorrt.plugin/TensorDesc: dtype, shape_expr, like()."""

    def __init__(self, dtype, shape_expr) -> None:
        self.dtype, self.shape_expr = dtype, ShapeExprs(shape_expr)

    @property
    def ndim(self) -> int:
        return len(self.shape_expr)

    def like(self) -> "TensorDesc":
        return TensorDesc(self.dtype, self.shape_expr)


class SymInt32:
    """.../trt_plugin_aot_impl/SymInt32: an int32 scalar kernel argument from an expression."""

    def __init__(self, value) -> None:
        self.value = value.value if isinstance(value, ShapeExpr) else int(value)


class SymExprs:
    """.../trt_plugin_aot_impl/SymExprs: the base of the symbolic-expression iterables."""


class SymIntExprs(SymExprs, list):
    """.../trt_plugin_aot_impl/SymIntExprs: the extra kernel arguments, in order."""

    @classmethod
    def from_tuple(cls, exprs) -> "SymIntExprs":
        if not all(isinstance(e, SymInt32) for e in exprs):
            raise TypeError("SymIntExprs holds SymInt32 values only (AOT extras are integers)")
        return cls(exprs)


class KernelLaunchParams:
    """.../trt_plugin_aot_impl/KernelLaunchParams: grid_*, block_*, shared_mem."""

    def __init__(self, grid_x=1, grid_y=1, grid_z=1, block_x=1, block_y=1, block_z=1, shared_mem=0) -> None:
        self.grid_x, self.grid_y, self.grid_z = grid_x, grid_y, grid_z
        self.block_x, self.block_y, self.block_z = block_x, block_y, block_z
        self.shared_mem = shared_mem


class AutoTuneCombination:
    """.../tensorrt.plugin/trt_plugin_autotune/AutoTuneCombination: pos(), tactics()."""

    def __init__(self, io_types: str | None = None, layouts: str | None = None, tactics=None) -> None:
        self.positions: dict[int, str] = {}
        self.tactic_ids = list(tactics or [])

    def pos(self, pos, dtypes: str, formats: str = "LINEAR") -> None:
        for p in [pos] if isinstance(pos, int) else pos:
            self.positions[p] = dtypes

    def tactics(self, tactics) -> None:
        self.tactic_ids = list(tactics)


def _check_register_hints(fn) -> None:
    # register(): "The decorated function must have type hints for all inputs as well as
    # return value."
    signature = inspect.signature(fn)
    for name, parameter in signature.parameters.items():
        if parameter.annotation is inspect.Parameter.empty:
            raise TypeError(f"register(): input {name!r} has no type hint")
        if parameter.annotation is not TensorDesc and parameter.annotation not in (
            int,
            float,
            str,
            bool,
            bytes,
        ):
            raise TypeError(f"register(): input {name!r} hint {parameter.annotation!r} is not supported")
    ret = signature.return_annotation
    if ret is not TensorDesc and typing.get_origin(ret) is not tuple:
        raise TypeError("register(): the return hint must be TensorDesc or Tuple[TensorDesc]")


def register(plugin_id: str, lazy_register: bool = False):
    if "::" not in plugin_id:
        raise ValueError("plugin_id must be '{namespace}::{name}'")

    def decorate(fn):
        if plugin_id in REGISTRY:
            raise ValueError(f"{plugin_id} is already registered")
        _check_register_hints(fn)
        REGISTRY[plugin_id] = {"register": fn, "inputs": list(inspect.signature(fn).parameters)}
        return fn

    return decorate


def _attach(kind: str, plugin_id: str, expected_tail: list[str]):
    def decorate(fn):
        if plugin_id not in REGISTRY:
            raise ValueError(f"{kind}(): {plugin_id} is not registered")
        params = list(inspect.signature(fn).parameters)
        expected = REGISTRY[plugin_id]["inputs"] + expected_tail
        if params != expected:
            raise TypeError(f"{kind}(): parameters {params} do not follow the schema {expected}")
        REGISTRY[plugin_id][kind] = fn
        return fn

    return decorate


def autotune(plugin_id: str):
    # (inp0, ..., attrs..., outputs) -> List[AutoTuneCombination]
    return _attach("autotune", plugin_id, ["outputs"])


def aot_impl(plugin_id: str):
    # (inp0, ..., attrs..., outputs, tactic) -> Tuple[str|bytes, str|bytes, KernelLaunchParams, SymExprs]
    attach = _attach("aot_impl", plugin_id, ["outputs", "tactic"])

    def decorate(fn):
        _check_aot_return_hint(fn)
        return attach(fn)

    return decorate


def _check_aot_return_hint(fn) -> None:
    # TensorRT's plugin/_validate.py (_validate_aot_impl, 10.9 to 11.1) requires this hint, though
    # the docs call aot_impl's hints optional: "No return annotation found for aot_impl function".
    ret = inspect.signature(fn).return_annotation
    if ret is inspect.Parameter.empty:
        raise ValueError(f"No return annotation found for aot_impl function {fn.__name__}")
    args = typing.get_args(ret)
    if typing.get_origin(ret) is not tuple or len(args) != 4:
        raise ValueError(f"aot_impl's return annotation is {ret}, not a 4-tuple")
    for index in (0, 1):
        names = typing.get_args(args[index]) or (args[index],)
        if not all(a in (str, bytes) for a in names):
            raise ValueError(
                f"aot_impl's return annotation at {index} is {args[index]}: expected str or bytes"
            )
    if not issubclass(args[2], KernelLaunchParams) or not issubclass(args[3], SymExprs):
        raise ValueError(f"aot_impl's return annotation {ret}: expected KernelLaunchParams, then SymExprs")
