"""The domain spec is validated, round-trips through JSON, and derives the storage DDL."""

from __future__ import annotations

import duckdb
import pytest

from decision_core.errors import SpecError
from decision_core.schema import (
    STEP_COLUMNS,
    BoxActions,
    DiscreteActions,
    DomainSpec,
    Feature,
    OutcomeFeature,
    steps_ddl,
    steps_schema,
)


def make(**overrides) -> DomainSpec:
    fields = dict(
        name="shop",
        version="1",
        state=(Feature("stock", unit="units"), Feature("demand"), Feature("open", dtype="bool")),
        outcomes=(OutcomeFeature("stock", tolerance=2.0),),
        actions=DiscreteActions(labels=("none", "small", "large"), masked=True),
        reward="-next.stock",
        goals={"refill": {"stock": 40.0}},
    )
    fields.update(overrides)
    return DomainSpec(**fields)


def test_spec_round_trips_through_json():
    spec = make()
    assert DomainSpec.from_json(spec.to_json()) == spec
    box = make(actions=BoxActions(names=("qty",), low=(0.0,), high=(100.0,)))
    assert DomainSpec.from_json(box.to_json()) == box
    assert spec.outcome_index.tolist() == [0] and spec.n_actions == 3 and box.action_dim == 1
    once = make(actions=DiscreteActions(labels=("a", "b"), once_per_episode=True))
    assert DomainSpec.from_json(once.to_json()) == once
    assert once.has_action_masks and not once.masked and "once per episode" in once.summary()
    judged = make(ope_estimator="mb")
    assert DomainSpec.from_json(judged.to_json()) == judged and '"ope_estimator": "mb"' in judged.to_json()
    assert "ope_estimator" not in spec.to_json()  # a spec that names none reads as one written before the field
    assert judged.summary().endswith("reward: -next.stock; judged by mb")


def test_specs_that_differ_only_in_how_the_domain_is_described_hold_the_same_data():
    spec = make()
    assert spec.same_data(make(ope_estimator="mb", goals={}, description="a shop"))
    assert not spec.same_data(make(reward="next.stock"))
    assert not spec.same_data(make(version="2"))
    assert not spec.same_data(make(state=(Feature("stock"), Feature("demand"), Feature("open"))))  # a dtype


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Shop Floor"}, "domain name"),
        ({"outcomes": (OutcomeFeature("price", 1.0),)}, "outcome feature 'price' is not a state feature"),
        ({"outcomes": ()}, "at least one outcome"),
        ({"outcomes": (OutcomeFeature("stock", -1.0),)}, "tolerance"),
        ({"state": (Feature("a"), Feature("a"))}, "duplicate state feature"),
        ({"actions": DiscreteActions(labels=("only",))}, "at least 2 labels"),
        ({"actions": BoxActions(names=("q",), low=(5.0,), high=(1.0,))}, "low < high"),
        ({"goals": {"g": {"demand": 1.0}}}, "not outcome features"),
        ({"ope_estimator": "magic"}, "ope_estimator 'magic' is not an OPE estimator; choose from ips, snips"),
    ],
)
def test_invalid_specs_name_the_broken_field(overrides, message):
    with pytest.raises(SpecError, match=message):
        make(**overrides)


def test_ddl_is_derived_from_the_schema_and_creates_fixed_size_arrays():
    spec = make()
    schema = steps_schema(spec)
    assert list(schema) == list(STEP_COLUMNS)
    con = duckdb.connect()
    con.execute(steps_ddl(spec))
    types = dict(
        con.execute(
            f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{spec.table}'"
        ).fetchall()
    )
    assert types["state"] == "FLOAT[3]" and types["next_state"] == "FLOAT[3]"
    assert types["action"] == "FLOAT[1]" and types["action_mask"] == "BOOLEAN[3]"
    nullable = dict(
        con.execute(
            f"SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = '{spec.table}'"
        ).fetchall()
    )
    assert nullable["propensity"] == "YES" and nullable["state"] == "NO"
