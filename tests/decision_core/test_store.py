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
