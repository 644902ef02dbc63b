"""The inventory adapter: simulated raw logs round-trip to the simulator's own states; bad rows are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adapters import get_adapter
from adapters.base import ColumnMapping
from adapters.ingest import ingest
from adapters.inventory import InventoryAdapter, InventoryContinuousAdapter
from decision_core.envs import EpisodeBatch, get_simulator
from decision_core.envs.rollout import rollout
from decision_core.errors import IngestError
from decision_core.store import DecisionStore

SIM = get_simulator("inventory")


@pytest.fixture
def store(tmp_path: Path):
    with DecisionStore(tmp_path / "store.duckdb") as s:
        yield s


def simulate(policy: str, batch: int, seed: int, *, continuous: bool = False, goal: str | None = None) -> EpisodeBatch:
    spec = SIM.spec(continuous=continuous)
    kwargs: dict[str, object] = {}
    if goal is not None:
        values, mask = next(g for g in SIM.goal_set() if g.name == goal).vector(spec)
        kwargs = dict(goals=np.tile(values, (batch, 1)), goal_mask=np.tile(mask, (batch, 1)), spec=spec)
        kwargs["stop_on_goal"] = True
    return rollout(
        SIM.dynamics(continuous=continuous),
        SIM.policies()[policy],
        batch=batch,
        max_steps=SIM.max_steps,
        rng=np.random.default_rng(seed),
        **kwargs,  # type: ignore[arg-type]
    )


def assert_round_trip(episodes: EpisodeBatch, arrays, continuous: bool) -> None:
    ep = np.repeat(np.arange(len(episodes.lengths)), episodes.lengths)
    t = np.concatenate([np.arange(n) for n in episodes.lengths])
    assert arrays.n_steps == len(t) and arrays.n_episodes == len(episodes.lengths)
    np.testing.assert_array_equal(arrays.episode_ends - arrays.episode_starts, episodes.lengths)
    np.testing.assert_allclose(arrays.states, episodes.observations[ep, t], atol=1e-5)
    np.testing.assert_allclose(arrays.next_states, episodes.observations[ep, t + 1], atol=1e-5)
    actions = episodes.actions[ep, t].reshape(len(t), -1) if continuous else episodes.actions[ep, t][:, None]
    np.testing.assert_allclose(arrays.actions, actions, atol=1e-5)
    np.testing.assert_allclose(arrays.propensities, episodes.propensities[ep, t], atol=1e-5)
    np.testing.assert_allclose(arrays.rewards, episodes.rewards[ep, t], atol=1e-5)
    last = t == episodes.lengths[ep] - 1
    np.testing.assert_array_equal(arrays.terminated, episodes.terminated[ep] & last)
    np.testing.assert_array_equal(arrays.truncated, ~episodes.terminated[ep] & last)


@pytest.mark.parametrize("policy", ["behaviour", "oracle", "random"])
def test_round_trip_reproduces_the_simulated_episodes(policy: str, tmp_path: Path, store: DecisionStore) -> None:
    episodes = simulate(policy, batch=8, seed=1)
    files = SIM.write_logs(episodes, tmp_path / "raw", seed=5)
    report = ingest(InventoryAdapter(), files, store)
    assert report.steps_inserted == episodes.lengths.sum()
    assert_round_trip(episodes, store.load_arrays("inventory"), continuous=False)
    # Each step's next state is exactly the next day's state: the store keeps only each episode's last one.
    spec = InventoryAdapter().spec()
    assert store.con.execute(f"SELECT count(*) FROM {spec.next_table}").fetchall() == [(len(episodes.lengths),)]


def test_round_trip_of_goal_episodes_keeps_their_ends(tmp_path: Path, store: DecisionStore) -> None:
    # Goal-directed runs stop early (some after a day or two, before any order has arrived) and are terminated.
    episodes = simulate("oracle", batch=12, seed=2, goal="restock_40")
    assert episodes.terminated.any() and episodes.lengths.min() < 4
    files = SIM.write_logs(episodes, tmp_path / "raw", seed=6)
    ingest(InventoryAdapter(), files, store)
    assert_round_trip(episodes, store.load_arrays("inventory"), continuous=False)


@pytest.mark.parametrize("policy", ["behaviour", "random"])
def test_continuous_round_trip_keeps_order_quantities(policy: str, tmp_path: Path, store: DecisionStore) -> None:
    episodes = simulate(policy, batch=6, seed=3, continuous=True)
    files = SIM.write_logs(episodes, tmp_path / "raw", seed=7)
    adapter = InventoryContinuousAdapter()
    assert adapter.spec() == SIM.spec(continuous=True)
    ingest(adapter, files, store)
    assert_round_trip(episodes, store.load_arrays("inventory_continuous"), continuous=True)


def test_registered_adapter_declares_the_simulator_spec() -> None:
    adapter = get_adapter("inventory")
    assert isinstance(adapter, InventoryAdapter) and adapter.spec() == SIM.spec()
    assert adapter.spec().goals == {g.name: g.targets for g in SIM.goal_set()}


def test_order_quantities_map_to_the_nearest_level(tmp_path: Path, store: DecisionStore) -> None:
    path = write_raw(tmp_path, "odd.csv", lambda f: f.with_columns(order_qty=pl.lit(7.0)))
    ingest(InventoryAdapter(), [path], store)
    assert (store.load_arrays("inventory").actions == 1).all()


def test_large_files_ingest_in_partitions_with_the_same_result(tmp_path: Path) -> None:
    episodes = simulate("behaviour", batch=10, seed=4)
    files = SIM.write_logs(episodes, tmp_path / "raw", seed=8)
    with DecisionStore(tmp_path / "one.duckdb") as one, DecisionStore(tmp_path / "parts.duckdb") as parts:
        ingest(InventoryAdapter(), files, one)
        ingest(InventoryAdapter(), files, parts, partition_bytes=files[0].stat().st_size // 3)
        # the store keeps episodes in the order they were written; compare them episode by episode
        query = "SELECT * EXCLUDE (source_file) FROM steps_inventory ORDER BY episode_id, step"
        a, b = one.con.execute(query).fetchall(), parts.con.execute(query).fetchall()
    assert len(a) == sum(int(n) for n in episodes.lengths) and a == b


def test_a_log_out_of_order_ingests_as_the_ordered_one(tmp_path: Path) -> None:
    ordered = write_raw(tmp_path, "ordered.csv", batch=4)
    shuffled = write_raw(tmp_path, "shuffled.csv", lambda f: f.sample(fraction=1.0, shuffle=True, seed=1), batch=4)
    query = "SELECT * EXCLUDE (source_file, source_row) FROM steps_inventory ORDER BY episode_id, step"
    with DecisionStore(tmp_path / "a.duckdb") as a, DecisionStore(tmp_path / "b.duckdb") as b:
        ingest(InventoryAdapter(), [ordered], a)
        ingest(InventoryAdapter(), [shuffled], b)
        rows = a.con.execute(query).fetchall()
        assert len(rows) > 100 and rows == b.con.execute(query).fetchall()


def test_reingesting_adds_nothing_and_a_renamed_log_ingests_with_a_mapping(tmp_path: Path, store) -> None:
    path = write_raw(tmp_path, "a.csv")
    first = ingest(InventoryAdapter(), [path], store)
    assert ingest(InventoryAdapter(), [path], store).steps_inserted == 0
    renamed = write_raw(tmp_path, "erp.csv", lambda f: f.rename({"order_qty": "po_quantity", "sku": "item"}))
    with DecisionStore(tmp_path / "other.duckdb") as other:
        mapping = ColumnMapping(rename={"po_quantity": "order_qty", "item": "sku"})
        assert ingest(InventoryAdapter(), [renamed], other, mapping=mapping).steps_inserted == first.steps_inserted


# -- bad input -------------------------------------------------------------------------------------------------


def write_raw(tmp_path: Path, name: str, edit=None, *, batch: int = 3, seed: int = 0) -> Path:
    """Simulated raw records (as text, the way a user's file arrives), optionally edited, written to ``name``."""
    episodes = simulate("behaviour", batch=batch, seed=seed)
    (src,) = SIM.write_logs(episodes, tmp_path / f"src_{name}", seed=seed)
    frame = pl.read_csv(src, infer_schema=False)
    if edit is not None:
        frame = edit(frame)
    path = tmp_path / name
    frame.write_csv(path)
    return path


def set_value(row: int, column: str, value: str):
    def edit(frame: pl.DataFrame) -> pl.DataFrame:
        idx = pl.int_range(pl.len())
        return frame.with_columns(pl.when(idx == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))

    return edit


@pytest.mark.parametrize(
    ("edit", "row", "column", "rule"),
    [
        (set_value(30, "on_hand", "plenty"), 30, "on_hand", "wrong type"),
        (set_value(31, "date", "2025-02-30"), 31, "date", "wrong type"),
        (set_value(40, "on_hand", "NaN"), 40, "state.on_hand", "NaN or infinite"),
        # A bad demand first reaches the next day's state (its demand features).
        (set_value(41, "demand", "inf"), 42, "state.demand_avg7", "NaN or infinite"),
        (set_value(42, "lead_time_days", "9"), 42, "state.lead_time", "NaN or infinite"),
        (set_value(50, "order_qty", "500"), 50, "action", "action outside the space"),
        (set_value(51, "order_qty", "-1"), 51, "action", "action outside the space"),
        (set_value(60, "propensity", "1.5"), 60, "propensity", "propensity outside (0, 1]"),
        (set_value(61, "propensity", "0"), 61, "propensity", "propensity outside (0, 1]"),
        (lambda f: f.filter(pl.int_range(pl.len()) != 70), 70, "step", "step gap"),
        (set_value(80, "closing_stock", ""), 80, "closing_stock", "missing value"),
    ],
)
def test_bad_rows_are_named_by_file_row_and_column(tmp_path: Path, store, edit, row, column, rule) -> None:
    path = write_raw(tmp_path, "bad.csv", edit)
    with pytest.raises(IngestError) as info:
        ingest(InventoryAdapter(), [path], store)
    err = info.value
    assert (err.file, err.row, err.column) == (str(path), row, column), str(err)
    assert rule in str(err)
    assert str(path) in str(err) and f"row {row}" in str(err)
    assert "inventory" not in store.domains() or store.count_steps("inventory") == 0


def test_missing_column_is_named(tmp_path: Path, store) -> None:
    path = write_raw(tmp_path, "nodemand.csv", lambda f: f.drop("demand"))
    with pytest.raises(IngestError) as info:
        ingest(InventoryAdapter(), [path], store)
    err = info.value
    assert (err.file, err.row, err.column) == (str(path), None, "demand")
    assert "missing column" in str(err) and "--mapping" in str(err)


def test_a_failed_ingest_of_several_files_writes_nothing(tmp_path: Path, store) -> None:
    good = write_raw(tmp_path, "good.csv", seed=1)
    also_good = write_raw(tmp_path, "good2.csv", seed=2)
    bad = write_raw(tmp_path, "bad.csv", set_value(5, "propensity", "2.0"), seed=3)
    with pytest.raises(IngestError) as info:
        ingest(InventoryAdapter(), [good, also_good, bad], store)
    assert info.value.file == str(bad) and info.value.row == 5
    assert "inventory" not in store.domains() or store.count_steps("inventory") == 0
    report = ingest(InventoryAdapter(), [good, also_good], store)
    assert store.count_steps("inventory") == report.steps_inserted == 2 * 3 * SIM.max_steps


def test_continuous_propensities_are_densities_and_may_exceed_one(tmp_path: Path, store) -> None:
    # An order quantity's logged propensity is a density over units: 2.5 is valid there, never in a discrete log.
    dense = write_raw(tmp_path, "dense.csv", set_value(60, "propensity", "2.5"))
    ingest(InventoryContinuousAdapter(), [dense], store)
    arrays = store.load_arrays("inventory_continuous")
    assert 2.5 in arrays.propensities
    for value in ("0", "-0.1", "inf"):
        bad = write_raw(tmp_path, f"bad_{value}.csv", set_value(61, "propensity", value))
        with pytest.raises(IngestError, match="propensity must be a positive, finite density") as info:
            ingest(InventoryContinuousAdapter(), [bad], store)
        assert (info.value.row, info.value.column) == (61, "propensity")
    with pytest.raises(IngestError, match=r"propensity outside \(0, 1\]"):
        ingest(InventoryAdapter(), [dense], store)
