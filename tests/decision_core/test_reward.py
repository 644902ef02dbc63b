"""Reward expressions: what a user writes is checked against the domain and evaluated over whole batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decision_core.errors import SpecError
from decision_core.reward import RewardExpressionError, parse_reward, resolve_rewards, rewards_for
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature
from decision_core.store import DecisionStore


@pytest.fixture
def spec() -> DomainSpec:
    return DomainSpec(
        name="shop",
        version="1",
        state=(
            Feature("on_hand"),
            Feature("stockout", "bool"),
            Feature("price"),
            Feature("page.views"),
        ),
        outcomes=(OutcomeFeature("on_hand", 1.0),),
        actions=DiscreteActions(("hold", "order")),
        reward="-0.5 * next.on_hand - 5 * next.stockout",
    )


def _batch() -> tuple[np.ndarray, np.ndarray]:
    states = np.array([[3, 0, 2.0, 10], [0, 1, 4.0, 0], [7, 0, 1.0, 5]], np.float32)
    next_states = np.array([[2, 0, 2.0, 11], [0, 1, 4.0, 1], [9, 0, 3.0, 5]], np.float32)
    return states, next_states


def test_expression_evaluates_vectorised_over_state_and_next_state(spec: DomainSpec) -> None:
    s, n = _batch()
    r = parse_reward("-0.5 * next.on_hand - 5 * next.stockout", spec).evaluate(s, n)
    assert r.dtype == np.float32 and r.shape == (3,)
    np.testing.assert_allclose(r, [-1.0, -5.0, -4.5])
    # Current-state features, arithmetic precedence, power and division.
    np.testing.assert_allclose(
        parse_reward("(next.price - price) / 2 + on_hand ** 2", spec).evaluate(s, n), [9.0, 0.0, 50.0]
    )
    np.testing.assert_allclose(parse_reward("state.on_hand - 1", spec).evaluate(s, n), [2.0, -1.0, 6.0])


def test_comparisons_logic_and_functions(spec: DomainSpec) -> None:
    s, n = _batch()

    def ev(text: str) -> np.ndarray:
        return parse_reward(text, spec).evaluate(s, n)

    np.testing.assert_array_equal(ev("next.on_hand > on_hand"), [0, 0, 1])
    np.testing.assert_array_equal(ev("0 < on_hand <= 3"), [1, 0, 0])  # chained comparison
    np.testing.assert_array_equal(ev("stockout or next.on_hand > 8"), [0, 1, 1])
    np.testing.assert_array_equal(ev("not stockout and price >= 2"), [1, 0, 0])
    np.testing.assert_array_equal(ev("where(next.stockout, -10, next.on_hand)"), [2, -10, 9])
    np.testing.assert_array_equal(ev("clip(next.on_hand - 4, -1, 3)"), [-1, -1, 3])
    np.testing.assert_array_equal(ev("min(on_hand, next.on_hand, 5)"), [2, 0, 5])
    np.testing.assert_array_equal(ev("max(on_hand, 4)"), [4, 4, 7])
    np.testing.assert_array_equal(ev("abs(next.on_hand - on_hand)"), [1, 0, 2])
    # A feature whose name has a dot, and the subscript form.
    np.testing.assert_array_equal(ev("next.page.views - page.views"), [1, 1, 0])
    np.testing.assert_array_equal(ev('next["page.views"] - state["page.views"]'), [1, 1, 0])


def test_torch_evaluator_matches_numpy(spec: DomainSpec) -> None:
    s, n = _batch()
    text = "where(next.on_hand > 1, -0.5 * next.on_hand, 2) - 5 * next.stockout + abs(price - next.price)"
    expr = parse_reward(text, spec)
    got = expr.evaluate_torch(torch.from_numpy(s), torch.from_numpy(n))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expr.evaluate(s, n))
    assert expr.next_features == ("on_hand", "stockout", "price")
    assert expr.state_features == ("price",)


def test_unknown_feature_lists_known_and_suggests_closest(spec: DomainSpec) -> None:
    with pytest.raises(RewardExpressionError) as err:
        parse_reward("-0.5 * next.on_hnad", spec)
    msg = str(err.value)
    assert "next.on_hnad" in msg and "column 8" in msg
    assert "did you mean 'next.on_hand'" in msg
    assert "on_hand, stockout, price, page.views" in msg
    assert err.value.column == 8
    assert isinstance(err.value, SpecError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("text", "token", "column", "fragment"),
    [
        ("__import__('os')", "__import__", 1, "unknown function"),
        ("__import__('os').system('true')", "__import__('os').system", 1, "unknown function"),
        ("on_hand.__class__", "on_hand.__class__", 1, "unknown feature"),
        ("price if stockout else 0", "price if stockout else 0", 1, "where(cond, a, b)"),
        ("on_hand // 2", "on_hand // 2", 1, "FloorDiv not allowed"),
        ("'abc'", "'abc'", 1, "only numbers"),
        ("[on_hand]", "[on_hand]", 1, "List is not allowed"),
        ("lambda: 1", "lambda: 1", 1, "Lambda is not allowed"),
        ("price + clip(on_hand, 0)", "clip", 9, "takes 3 arguments, got 2"),
        ("sqrt(price)", "sqrt", 1, "unknown function"),
        ("price in (1, 2)", "price in (1, 2)", 1, "comparison In not allowed"),
        ("price + ", "+", 7, "not a valid expression"),
        ("next", "next", 1, "must be followed by a feature"),
        ("state[0]", "state[0]", 1, 'state["feature"]'),
    ],
)
def test_rejected_expressions_name_token_and_position(
    spec: DomainSpec, text: str, token: str, column: int, fragment: str
) -> None:
    with pytest.raises(RewardExpressionError) as err:
        parse_reward(text, spec)
    assert err.value.token == token
    assert err.value.column == column
    assert fragment in str(err.value)


def test_huge_constant_powers_do_not_run_python_integer_arithmetic(spec: DomainSpec) -> None:
    s, n = _batch()
    # 9**9**9 as Python ints would take minutes; here it is float32 arithmetic and yields inf.
    r = parse_reward("9 ** 9 ** 9", spec).evaluate(s, n)
    assert np.isinf(r).all()


def test_resolve_uses_spec_reward_override_and_logged(spec: DomainSpec) -> None:
    s, n = _batch()
    logged = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(resolve_rewards(s, n, logged, spec), [-1.0, -5.0, -4.5])
    np.testing.assert_allclose(resolve_rewards(s, n, logged, spec, "next.price"), [2.0, 4.0, 3.0])
    np.testing.assert_array_equal(resolve_rewards(s, n, logged, spec, "logged"), logged)


def test_logged_without_rewards_and_missing_reward_are_errors(spec: DomainSpec) -> None:
    s, n = _batch()
    partial = np.array([1.0, np.nan, 3.0], np.float32)
    with pytest.raises(SpecError, match=r"1 of 3 steps have none \(first at step row 1\)"):
        resolve_rewards(s, n, partial, spec, "logged")
    no_reward = DomainSpec.from_dict({**spec.to_dict(), "reward": None})
    with pytest.raises(SpecError, match="defines no reward"):
        resolve_rewards(s, n, partial, no_reward)


def test_non_finite_rewards_are_refused_with_the_row(spec: DomainSpec) -> None:
    s, n = _batch()
    with pytest.raises(SpecError, match=r"not finite on 1 steps \(first at step row 1"):
        resolve_rewards(s, n, None, spec, "1 / next.on_hand")
    # Guarded division is fine.
    r = resolve_rewards(s, n, None, spec, "where(next.on_hand > 0, 1 / max(next.on_hand, 1), 0)")
    np.testing.assert_allclose(r, [0.5, 0.0, 1 / 9], rtol=1e-6)


def test_rewards_for_stored_domain(tmp_path, spec: DomainSpec) -> None:
    import polars as pl

    from decision_core.schema import steps_schema

    s, n = _batch()
    rows = {
        "episode_id": ["a", "a", "b"],
        "step": [0, 1, 0],
        "state": s.tolist(),
        "action": [[0.0], [1.0], [0.0]],
        "action_mask": [None, None, None],
        "propensity": [0.5, 0.5, 0.5],
        "reward": [None, None, None],
        "next_state": n.tolist(),
        "terminated": [False, False, True],
        "truncated": [False, True, False],
        "timestamp": [None, None, None],
        "source_adapter": ["t"] * 3,
        "adapter_version": ["1"] * 3,
        "source_file": ["f"] * 3,
        "source_row": [0, 1, 2],
    }
    frame = pl.DataFrame(rows, schema=steps_schema(spec))
    with DecisionStore(tmp_path / "s.duckdb") as store:
        with store.transaction() as con:
            con.register("incoming", frame)
            store.insert_steps(spec, "incoming", con)
        arrays = store.load_arrays("shop")
    order = np.argsort(arrays.states[:, 0])  # storage order is by episode; compare by row content
    expected = np.array([-1.0, -5.0, -4.5], np.float32)[np.argsort(s[:, 0])]
    np.testing.assert_allclose(rewards_for(arrays)[order], expected)
    with pytest.raises(SpecError, match="reward 'logged' needs a reward on every step"):
        rewards_for(arrays, "logged")


def test_the_reward_tasks_the_readme_and_docs_show_compile_for_their_domains() -> None:
    import re
    from pathlib import Path

    from adapters import get_adapter

    root = Path(__file__).parents[2]
    shown = [
        (m["domain"], m["task"])
        for doc in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
        for m in re.finditer(r"--domain (?P<domain>[a-z_]+)[^\n]*?--task \"(?P<task>[^\"]+)\"", doc.read_text())
    ]
    assert shown  # the README shows one
    for domain, task in shown:
        parse_reward(task, get_adapter(domain).spec())
