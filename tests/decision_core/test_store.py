"""The store refuses what it cannot read correctly and keeps one shape per domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from decision_core.errors import StoreError
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature
from decision_core.store import DecisionStore


def spec(features=("x",)) -> DomainSpec:
    return DomainSpec(
        name="toy",
        version="1",
        state=tuple(Feature(f) for f in features),
        outcomes=(OutcomeFeature(features[0], 0.1),),
        actions=DiscreteActions(labels=("a", "b")),
    )


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path):
    path = tmp_path / "s.duckdb"
    with DecisionStore(path) as store:
        store.con.execute("UPDATE schema_info SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 999"):
        DecisionStore(path)


def test_missing_store_and_unknown_domain_are_explained(tmp_path: Path):
    with pytest.raises(StoreError, match="ingest logs first"):
        DecisionStore(tmp_path / "none.duckdb", read_only=True)
    with DecisionStore(tmp_path / "s.duckdb") as store:
        store.ensure_domain(spec())
        with pytest.raises(StoreError, match="no domain 'shop'.*Stored: toy"):
            store.spec("shop")
        with pytest.raises(StoreError, match="has no steps"):
            store.load_arrays("toy")


def test_a_domain_keeps_its_shape(tmp_path: Path):
    with DecisionStore(tmp_path / "s.duckdb") as store:
        store.ensure_domain(spec())
        store.ensure_domain(spec())  # same spec again is fine
        with pytest.raises(StoreError, match="different shape"):
            store.ensure_domain(spec(("x", "y")))


def test_a_foreign_duckdb_file_is_not_mistaken_for_a_store(tmp_path: Path):
    import duckdb

    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (a INT)")
    con.close()
    with pytest.raises(StoreError, match="not a decision store"):
        DecisionStore(path)


def test_once_per_episode_masks_come_from_the_episode_and_combine_with_logged_masks() -> None:
    import numpy as np

    from decision_core.store import DomainArrays

    once = DomainSpec(
        name="quiz",
        version="1",
        state=(Feature("x"),),
        outcomes=(OutcomeFeature("x", 0.5),),
        actions=DiscreteActions(labels=("a", "b", "c", "d"), masked=True, once_per_episode=True),
    )
    n = 5  # episode one takes b, d, a; episode two takes d, b
    logged = np.ones((n, 4), np.bool_)
    logged[4, 2] = False  # "c" was not offered at the last step
    arrays = DomainArrays(
        spec=once,
        states=np.zeros((n, 1), np.float32),
        actions=np.array([[1], [3], [0], [3], [1]], np.float32),
        next_states=np.zeros((n, 1), np.float32),
        rewards=np.zeros(n, np.float32),
        propensities=np.full(n, np.nan, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=np.array([False, False, True, False, True]),
        action_masks=logged,
        episode_starts=np.array([0, 3]),
        episode_ends=np.array([3, 5]),
    ).with_derived_masks()
    expected = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert arrays.action_masks.astype(int).tolist() == expected
