"""Rewards stated as expressions over state and next-state features, checked and compiled, never executed.

A reward expression is written in a small arithmetic language over the domain's state features::

    -0.1 * next.on_hand - 5 * next.stockout
    next.converted
    where(next.booked > 0, 1.0, -0.05)
    clip(next.revenue - cost, -10, 10)

- ``name`` (or ``state.name``) is a feature of the state the action was taken in; ``next.name`` the same
  feature of the next state.
  A feature whose name is not a Python identifier is written ``state["name"]`` / ``next["name"]``.
- Numbers, ``+ - * / **``, unary ``-``/``+``, comparisons (``< <= > >= == !=``, chains allowed; true is 1.0),
  ``and`` / ``or`` / ``not`` (non-zero is true), and the functions ``min(a, b, ...)``, ``max(a, b, ...)``,
  ``abs(x)``, ``clip(x, lo, hi)``, ``where(cond, a, b)``, all elementwise.
- ``"logged"`` means the logs' reward column.

The text is parsed with :mod:`ast` and every node is checked against a whitelist and the domain's features; the
checked tree is compiled into a closure over a numpy (or torch) backend that evaluates the whole
``(states, next_states)`` batch at once. Nothing is passed to ``eval``, ``exec`` or SQL.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from decision_core.errors import SpecError
from decision_core.schema import DomainSpec

#: Keyword meaning "use the reward column of the logs".
LOGGED = "logged"
#: Longest accepted expression; longer ones are almost certainly not hand-written rewards.
MAX_LENGTH = 2000
#: Deepest accepted expression tree (guards the recursive compiler).
MAX_DEPTH = 64

_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    # name -> (min args, max args or None for any)
    "min": (2, None),
    "max": (2, None),
    "abs": (1, 1),
    "clip": (3, 3),
    "where": (3, 3),
}


class RewardExpressionError(SpecError):
    """A reward expression breaks a rule; names the token, its 1-based column and what is allowed."""

    def __init__(self, text: str, message: str, column: int | None = None, token: str | None = None) -> None:
        self.text = text
        self.column = column
        self.token = token
        where = f" at column {column}" if column is not None else ""
        tok = f" '{token}'" if token is not None else ""
        pointer = ""
        if column is not None and len(text) <= 200 and "\n" not in text:
            pointer = f"\n    {text}\n    {' ' * (column - 1)}^"
        super().__init__(f"reward expression{tok}{where}: {message}{pointer}")


class _Backend(Protocol):
    """The array operations a compiled expression needs (numpy or torch)."""

    def const(self, value: float, like: Any) -> Any: ...
    def to_float(self, x: Any) -> Any: ...
    def truth(self, x: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def abs(self, x: Any) -> Any: ...
    def where(self, c: Any, a: Any, b: Any) -> Any: ...
    def logical_and(self, a: Any, b: Any) -> Any: ...
    def logical_or(self, a: Any, b: Any) -> Any: ...
    def logical_not(self, a: Any) -> Any: ...


class _NumpyBackend:
    def const(self, value: float, like: Any) -> Any:
        return np.full(like.shape[0], value, dtype=np.float32)

    def to_float(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float32)

    def truth(self, x: Any) -> Any:
        return x if x.dtype == np.bool_ else x != 0

    def minimum(self, a: Any, b: Any) -> Any:
        return np.minimum(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return np.maximum(a, b)

    def abs(self, x: Any) -> Any:
        return np.abs(x)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        return np.where(c, a, b)

    def logical_and(self, a: Any, b: Any) -> Any:
        return np.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> Any:
        return np.logical_or(a, b)

    def logical_not(self, a: Any) -> Any:
        return np.logical_not(a)


class _TorchBackend:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def const(self, value: float, like: Any) -> Any:
        return self.torch.full((like.shape[0],), value, dtype=self.torch.float32, device=like.device)

    def to_float(self, x: Any) -> Any:
        return x.to(self.torch.float32)

    def truth(self, x: Any) -> Any:
        return x if x.dtype == self.torch.bool else x != 0

    def minimum(self, a: Any, b: Any) -> Any:
        return self.torch.minimum(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return self.torch.maximum(a, b)

    def abs(self, x: Any) -> Any:
        return self.torch.abs(x)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        return self.torch.where(c, a, b)

    def logical_and(self, a: Any, b: Any) -> Any:
        return self.torch.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> Any:
        return self.torch.logical_or(a, b)

    def logical_not(self, a: Any) -> Any:
        return self.torch.logical_not(a)


# A compiled node: (backend, states, next_states) -> array of shape (B,), float32 or bool.
_Node = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class RewardExpression:
    """A checked reward expression over a domain's features, evaluated over whole batches.

    Build with :func:`parse_reward`. ``state_features`` / ``next_features`` list the features it reads.
    """

    text: str
    spec_name: str
    state_features: tuple[str, ...]
    next_features: tuple[str, ...]
    _root: _Node

    def evaluate(self, states: np.ndarray, next_states: np.ndarray) -> np.ndarray:
        """(N,) float32 rewards of the transitions ``states[i] -> next_states[i]`` (both (N, S) raw values)."""
        states = np.asarray(states, dtype=np.float32)
        next_states = np.asarray(next_states, dtype=np.float32)
        if states.ndim != 2 or states.shape != next_states.shape:
            raise ValueError(
                f"reward '{self.text}': states and next_states must both be (N, S); got {states.shape} and "
                f"{next_states.shape}"
            )
        backend = _NumpyBackend()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = backend.to_float(self._root(backend, states, next_states))
        return np.ascontiguousarray(out, dtype=np.float32)

    def evaluate_torch(self, states: Any, next_states: Any) -> Any:
        """The same as :meth:`evaluate` over torch tensors (on their device); returns a float32 tensor."""
        if states.ndim != 2 or states.shape != next_states.shape:
            raise ValueError(
                f"reward '{self.text}': states and next_states must both be (N, S); got "
                f"{tuple(states.shape)} and {tuple(next_states.shape)}"
            )
        backend = _TorchBackend()
        return backend.to_float(self._root(backend, states.float(), next_states.float()))


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Compiler:
    """Walks a parsed expression, checks every node and builds the evaluation closure."""

    def __init__(self, text: str, spec: DomainSpec) -> None:
        self.text = text
        self.spec = spec
        self.index = {n: i for i, n in enumerate(spec.state_names)}
        self.state_used: list[str] = []
        self.next_used: list[str] = []

    # -- errors ---------------------------------------------------------------------------------------------
    def fail(self, node: ast.AST, message: str, token: str | None = None) -> RewardExpressionError:
        col = getattr(node, "col_offset", None)
        if token is None:
            token = ast.get_source_segment(self.text, node) if hasattr(node, "lineno") else None
        # ast columns are UTF-8 byte offsets; report a character column.
        column = None
        if col is not None:
            column = len(self.text.encode("utf-8")[:col].decode("utf-8", errors="ignore")) + 1
        return RewardExpressionError(self.text, message, column=column, token=token)

    def known_features(self) -> str:
        return ", ".join(self.spec.state_names)

    # -- features -------------------------------------------------------------------------------------------
    def feature(self, node: ast.AST, name: str, *, nxt: bool) -> _Node:
        if name not in self.index:
            prefix = "next." if nxt else ""
            suggestions = [prefix + n for n in self.spec.state_names]
            if not nxt:
                suggestions += ["next." + n for n in self.spec.state_names]
            raise self.fail(
                node,
                f"unknown feature '{prefix}{name}' of domain '{self.spec.name}'. Known state features: "
                f"{self.known_features()} (write 'name' for the current state, 'next.name' for the next "
                f"state){_closest(prefix + name, suggestions)}",
            )
        i = self.index[name]
        (self.next_used if nxt else self.state_used).append(name)
        if nxt:
            return lambda b, s, n: n[:, i]
        return lambda b, s, n: s[:, i]

    @staticmethod
    def dotted(node: ast.AST) -> str | None:
        """``a.b.c`` as a string, or None when the node is not a plain attribute chain of names."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(node.id)
        return ".".join(reversed(parts))

    def name_or_attribute(self, node: ast.Name | ast.Attribute) -> _Node:
        name = self.dotted(node)
        if name is None:
            raise self.fail(node, "only feature names ('name' or 'next.name') may be used with '.'")
        head, _, rest = name.partition(".")
        # Feature names may contain dots; "next.<feature>" wins, then a feature spelled with dots.
        if head == "next" and rest in self.index:
            return self.feature(node, rest, nxt=True)
        if head == "state" and rest in self.index:
            return self.feature(node, rest, nxt=False)
        if name in self.index:
            return self.feature(node, name, nxt=False)
        if name in _FUNCTIONS:
            raise self.fail(node, f"'{name}' is a function; call it, e.g. {name}(...)")
        if head == "next" and rest:
            return self.feature(node, rest, nxt=True)
        if name in ("state", "next"):
            raise self.fail(node, f"'{name}' must be followed by a feature: {name}.feature or {name}[\"feature\"]")
        return self.feature(node, name, nxt=False)

    def subscript(self, node: ast.Subscript) -> _Node:
        if not (
            isinstance(node.value, ast.Name)
            and node.value.id in ("state", "next")
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            raise self.fail(node, 'subscripts are only allowed as state["feature"] or next["feature"]')
        return self.feature(node, node.slice.value, nxt=node.value.id == "next")

    # -- nodes ----------------------------------------------------------------------------------------------
    def compile(self, node: ast.AST, depth: int = 0) -> _Node:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"expression is nested more than {MAX_DEPTH} levels deep")
        d = depth + 1
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(node, "only numbers are allowed as constants (no strings, None or True/False)")
            # Constants become float32 arrays at once: no Python big-int arithmetic (e.g. 9**9**9) ever runs.
            v = float(value)
            return lambda b, s, n: b.const(v, s)
        if isinstance(node, ast.Name | ast.Attribute):
            return self.name_or_attribute(node)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.UnaryOp):
            x = self.compile(node.operand, d)
            if isinstance(node.op, ast.USub):
                return lambda b, s, n: -b.to_float(x(b, s, n))
            if isinstance(node.op, ast.UAdd):
                return lambda b, s, n: b.to_float(x(b, s, n))
            if isinstance(node.op, ast.Not):
                return lambda b, s, n: b.logical_not(b.truth(x(b, s, n)))
            raise self.fail(node, "operator not allowed (allowed unary operators: -, +, not)")
        if isinstance(node, ast.BinOp):
            return self.binop(node, d)
        if isinstance(node, ast.BoolOp):
            parts = [self.compile(v, d) for v in node.values]
            combine = "logical_and" if isinstance(node.op, ast.And) else "logical_or"

            def boolop(b: _Backend, s: Any, n: Any) -> Any:
                out = b.truth(parts[0](b, s, n))
                for p in parts[1:]:
                    out = getattr(b, combine)(out, b.truth(p(b, s, n)))
                return out

            return boolop
        if isinstance(node, ast.Compare):
            return self.compare(node, d)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        if isinstance(node, ast.IfExp):
            raise self.fail(node, "conditional expressions are not allowed; write where(cond, a, b)")
        kind = type(node).__name__
        raise self.fail(
            node,
            f"{kind} is not allowed; use numbers, features, + - * / **, comparisons, and/or/not and "
            f"{', '.join(_FUNCTIONS)}",
        )

    def binop(self, node: ast.BinOp, d: int) -> _Node:
        left, right = self.compile(node.left, d), self.compile(node.right, d)
        ops: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
            ast.Add: lambda a, c: a + c,
            ast.Sub: lambda a, c: a - c,
            ast.Mult: lambda a, c: a * c,
            ast.Div: lambda a, c: a / c,
            ast.Pow: lambda a, c: a**c,
        }
        op = ops.get(type(node.op))
        if op is None:
            symbol = ast.get_source_segment(self.text, node)
            raise self.fail(node, f"operator {type(node.op).__name__} not allowed (allowed: + - * / **)", token=symbol)
        return lambda b, s, n: op(b.to_float(left(b, s, n)), b.to_float(right(b, s, n)))

    def compare(self, node: ast.Compare, d: int) -> _Node:
        ops: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
            ast.Lt: lambda a, c: a < c,
            ast.LtE: lambda a, c: a <= c,
            ast.Gt: lambda a, c: a > c,
            ast.GtE: lambda a, c: a >= c,
            ast.Eq: lambda a, c: a == c,
            ast.NotEq: lambda a, c: a != c,
        }
        fns = []
        for op in node.ops:
            fn = ops.get(type(op))
            if fn is None:
                raise self.fail(node, f"comparison {type(op).__name__} not allowed (allowed: < <= > >= == !=)")
            fns.append(fn)
        operands = [self.compile(node.left, d)] + [self.compile(c, d) for c in node.comparators]

        def compare(b: _Backend, s: Any, n: Any) -> Any:
            values = [b.to_float(o(b, s, n)) for o in operands]
            out = fns[0](values[0], values[1])
            for k in range(1, len(fns)):
                out = b.logical_and(out, fns[k](values[k], values[k + 1]))
            return out

        return compare

    def call(self, node: ast.Call, d: int) -> _Node:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            name = ast.get_source_segment(self.text, node.func) or "?"
            raise self.fail(
                node.func,
                f"unknown function '{name}'; allowed: {', '.join(f'{f}()' for f in _FUNCTIONS)}"
                f"{_closest(name, list(_FUNCTIONS))}",
                token=name,
            )
        fname = node.func.id
        if node.keywords:
            raise self.fail(node.keywords[0].value, f"{fname}() takes positional arguments only", token=fname)
        lo, hi = _FUNCTIONS[fname]
        nargs = len(node.args)
        if nargs < lo or (hi is not None and nargs > hi):
            expected = f"{lo}" if lo == hi else f"at least {lo}"
            raise self.fail(node, f"{fname}() takes {expected} arguments, got {nargs}", token=fname)
        args = [self.compile(a, d) for a in node.args]
        if fname in ("min", "max"):
            reduce = "minimum" if fname == "min" else "maximum"

            def minmax(b: _Backend, s: Any, n: Any) -> Any:
                out = b.to_float(args[0](b, s, n))
                for a in args[1:]:
                    out = getattr(b, reduce)(out, b.to_float(a(b, s, n)))
                return out

            return minmax
        if fname == "abs":
            return lambda b, s, n: b.abs(b.to_float(args[0](b, s, n)))
        if fname == "clip":
            x, low, high = args
            return lambda b, s, n: b.minimum(
                b.maximum(b.to_float(x(b, s, n)), b.to_float(low(b, s, n))), b.to_float(high(b, s, n))
            )
        c, a, e = args  # where
        return lambda b, s, n: b.where(b.truth(c(b, s, n)), b.to_float(a(b, s, n)), b.to_float(e(b, s, n)))


def parse_reward(text: str, spec: DomainSpec) -> RewardExpression:
    """Parse and check ``text`` against ``spec``'s features; raises :class:`RewardExpressionError`."""
    if not isinstance(text, str) or not text.strip():
        raise RewardExpressionError(str(text), "empty; write an expression such as 'next.converted'")
    if text.strip() == LOGGED:
        raise RewardExpressionError(
            text, "'logged' names the logs' reward column, not an expression; use resolve_rewards()"
        )
    if len(text) > MAX_LENGTH:
        raise RewardExpressionError(text[:60] + "…", f"longer than {MAX_LENGTH} characters")
    stripped = text.strip()
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        col, msg = exc.offset, exc.msg
        if col is None or col <= 0 or col > len(stripped):
            # Python reports an unexpected end of input at offset 0; point at the last character instead.
            col, msg = len(stripped), f"{msg}: the expression ends too early"
        raise RewardExpressionError(stripped, f"not a valid expression ({msg})", col, stripped[col - 1]) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise RewardExpressionError(text, f"cannot be parsed ({type(exc).__name__})") from None
    compiler = _Compiler(text.strip(), spec)
    try:
        root = compiler.compile(tree.body)
    except RecursionError:
        raise RewardExpressionError(text, f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    return RewardExpression(
        text=text.strip(),
        spec_name=spec.name,
        state_features=tuple(dict.fromkeys(compiler.state_used)),
        next_features=tuple(dict.fromkeys(compiler.next_used)),
        _root=root,
    )


def check_reward(reward: str, spec: DomainSpec) -> None:
    """Raise if ``reward`` is neither ``"logged"`` nor a valid expression over ``spec``."""
    if reward.strip() != LOGGED:
        parse_reward(reward, spec)


def resolve_rewards(
    states: np.ndarray,
    next_states: np.ndarray,
    logged: np.ndarray | None,
    spec: DomainSpec,
    reward: str | None = None,
) -> np.ndarray:
    """The (N,) float32 reward of every transition, resolved once before training.

    ``reward`` is an expression, ``"logged"`` (the logs' reward column ``logged``), or ``None`` for the
    domain's own reward definition (``spec.reward``). Raises :class:`SpecError` when there is no reward to use,
    when the logs lack rewards for ``"logged"``, or when the expression yields non-finite values.
    """
    source = reward if reward is not None else spec.reward
    if source is None or not source.strip():
        raise SpecError(
            f"domain '{spec.name}' defines no reward; pass a reward expression over its features "
            f"(e.g. 'next.{spec.outcome_names[0]}') or 'logged' to use the logs' reward column"
        )
    if source.strip() == LOGGED:
        if logged is None:
            raise SpecError(f"domain '{spec.name}': reward 'logged' was asked for but no reward column was given")
        logged = np.asarray(logged, dtype=np.float32)
        missing = np.flatnonzero(~np.isfinite(logged))
        if missing.size:
            raise SpecError(
                f"domain '{spec.name}': reward 'logged' needs a reward on every step, but {missing.size} of "
                f"{logged.size} steps have none (first at step row {int(missing[0])}); ingest logs with a "
                f"reward column or state the reward as an expression over the features"
            )
        return np.ascontiguousarray(logged, dtype=np.float32)
    expression = parse_reward(source, spec)
    rewards = expression.evaluate(states, next_states)
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        row = int(bad[0])
        raise SpecError(
            f"domain '{spec.name}': reward '{expression.text}' is not finite on {bad.size} steps (first at step "
            f"row {row}: {float(rewards[row])}); guard divisions and powers, e.g. with where() or clip()"
        )
    return rewards


def rewards_for(arrays: Any, reward: str | None = None) -> np.ndarray:
    """:func:`resolve_rewards` over a :class:`~decision_core.store.DomainArrays`."""
    return resolve_rewards(arrays.states, arrays.next_states, arrays.rewards, arrays.spec, reward)
