"""The recommender adapter: the simulator's raw logs come back as its own observations; bad input is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adapters import ColumnMapping, get_adapter
from adapters.ingest import ingest
from adapters.recommender import RecommenderAdapter
from decision_core.envs.recommender import CATEGORIES, RecommenderSimulator, catalogue
from decision_core.envs.rollout import rollout
from decision_core.errors import IngestError
from decision_core.store import DecisionStore

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "recommender"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    """Behaviour episodes and the raw impression log written for them."""
    sim = RecommenderSimulator()
    episodes = rollout(
        sim.dynamics(), sim.policies()["behaviour"], batch=40, max_steps=sim.max_steps, rng=np.random.default_rng(5)
    )
    out = tmp_path_factory.mktemp("logs")
    (path,) = sim.write_logs(episodes, out, seed=9)
    return episodes, path


def _flat(episodes, field: np.ndarray, offset: int = 0) -> np.ndarray:
    lengths = episodes.lengths
    ep = np.repeat(np.arange(len(lengths)), lengths)
    t = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return field[ep, t + offset]


def test_round_trip_reproduces_the_simulated_episodes(simulated, tmp_path: Path) -> None:
    episodes, path = simulated
    with DecisionStore(tmp_path / "store.duckdb") as store:
        report = ingest(RecommenderAdapter(), [path], store)
        arrays = store.load_arrays("recommender")
    n = int(episodes.lengths.sum())
    assert report.steps_inserted == n == arrays.n_steps
    assert arrays.n_episodes == len(episodes.lengths)
    np.testing.assert_allclose(arrays.states, _flat(episodes, episodes.observations), atol=1e-5)
    np.testing.assert_allclose(arrays.next_states, _flat(episodes, episodes.observations, 1), atol=1e-5)
    np.testing.assert_array_equal(arrays.actions[:, 0], _flat(episodes, episodes.actions))
    np.testing.assert_allclose(arrays.propensities, _flat(episodes, episodes.propensities), atol=1e-5)
    np.testing.assert_allclose(arrays.rewards, _flat(episodes, episodes.rewards), atol=1e-5)
    ends = np.cumsum(episodes.lengths) - 1
    expected_term = np.zeros(n, np.bool_)
    expected_term[ends] = episodes.terminated
    np.testing.assert_array_equal(arrays.terminated, expected_term)
    np.testing.assert_array_equal(arrays.truncated[ends], ~episodes.terminated)
    assert arrays.has_propensities and arrays.has_rewards


def test_reingesting_the_same_log_adds_nothing(simulated, tmp_path: Path) -> None:
    _, path = simulated
    with DecisionStore(tmp_path / "store.duckdb") as store:
        first = ingest(RecommenderAdapter(), [path], store)
        again = ingest(RecommenderAdapter(), [path], store)
    assert first.steps_inserted > 0 and again.steps_inserted == 0


def test_adapter_is_registered_with_the_simulator_spec() -> None:
    adapter = get_adapter("recommender")
    assert adapter.spec() == RecommenderSimulator().spec()
    assert adapter.spec().n_actions == len(catalogue().category) >= 200


def _bad_copy(path: Path, out: Path, row: int, column: str, value: str) -> Path:
    frame = pl.read_csv(path, infer_schema=False)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )
    frame.write_csv(out)
    return out


@pytest.mark.parametrize(
    ("column", "value", "reported"),
    [
        ("item_id", "sofa", "item_id"),  # wrong type
        ("item_id", "999", "action"),  # outside the catalogue
        ("propensity", "1.5", "propensity"),
        ("dwell_seconds", "NaN", "next_state.dwell_minutes"),
        ("session_seq", "7", "step"),  # a step gap
    ],
)
def test_bad_values_are_named_by_file_row_and_column(simulated, tmp_path: Path, column, value, reported) -> None:
    _, path = simulated
    row = 4 if column != "session_seq" else 2  # row 2 is the last step of the first session
    frame = pl.read_csv(path, infer_schema=False)
    assert frame["session_id"][1] == frame["session_id"][2]
    bad = _bad_copy(path, tmp_path / "bad.csv", row, column, value)
    with DecisionStore(tmp_path / "store.duckdb") as store, pytest.raises(IngestError) as info:
        ingest(RecommenderAdapter(), [bad], store)
    err = info.value
    assert err.file == str(bad) and err.row == row and err.column == reported
    assert str(bad) in str(err) and f"row {row}" in str(err)


def test_missing_column_is_named(simulated, tmp_path: Path) -> None:
    _, path = simulated
    bad = tmp_path / "no_user.csv"
    pl.read_csv(path, infer_schema=False).drop("user_id").write_csv(bad)
    with DecisionStore(tmp_path / "store.duckdb") as store, pytest.raises(IngestError) as info:
        ingest(RecommenderAdapter(), [bad], store)
    assert info.value.file == str(bad) and info.value.column == "user_id" and "missing column" in str(info.value)


def test_failed_ingest_of_several_files_writes_nothing(simulated, tmp_path: Path) -> None:
    _, path = simulated
    good = tmp_path / "good.csv"
    pl.read_csv(path, infer_schema=False).with_columns(session_id=pl.lit("x") + pl.col("session_id")).write_csv(good)
    bad = _bad_copy(path, tmp_path / "bad.csv", 10, "propensity", "0")
    with DecisionStore(tmp_path / "store.duckdb") as store:
        with pytest.raises(IngestError) as info:
            ingest(RecommenderAdapter(), [path, good, bad], store)
        assert info.value.file == str(bad) and info.value.row == 10
        assert "recommender" not in store.domains()
        ingest(RecommenderAdapter(), [path], store)  # the store is still usable
        assert store.count_steps("recommender") == pl.read_csv(path).height


def test_ratings_log_ingests_through_the_shipped_mapping(tmp_path: Path) -> None:
    ratings = pl.read_csv(SAMPLES / "ratings_sample.csv")
    assert ratings.columns == ["userId", "movieId", "rating", "timestamp"]
    mapping = ColumnMapping.load(SAMPLES / "ratings_mapping.toml")
    with DecisionStore(tmp_path / "store.duckdb") as store:
        report = ingest(RecommenderAdapter(), [SAMPLES / "ratings_sample.csv"], store, mapping=mapping)
        arrays = store.load_arrays("recommender")
        sessions = store.con.execute(
            "SELECT episode_id, count(*), min(timestamp) FROM steps_recommender GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert report.rows_read == report.steps_inserted == ratings.height
    # Each user's ratings split into sessions at the multi-hour gaps; ids carry user and session start.
    assert len(sessions) == 6 and all(e.split("/")[0] in {"1", "2", "3"} for e, _, _ in sessions)
    assert np.isnan(arrays.propensities).all()
    assert arrays.terminated[arrays.episode_ends - 1].all()
    # Ratings >= 4 are clicks; the state counts them, and the rating drives satisfaction.
    names = arrays.spec.state_names
    clicks = arrays.next_states[arrays.episode_ends - 1, names.index("clicks")]
    liked = (
        ratings.sort("userId", "timestamp")
        .with_columns(session=(pl.col("timestamp").diff().over("userId").fill_null(0) > 1800).cum_sum().over("userId"))
        .group_by("userId", "session")
        .agg((pl.col("rating") >= 4).sum())
        .sort("userId", "session")["rating"]
        .to_numpy()
    )
    np.testing.assert_array_equal(clicks, liked)
    first = arrays.episode_starts[0]
    rating = float(ratings.sort("userId", "timestamp")["rating"][0])
    expected_sat = (4 * 0.5 + (rating - 1) / 4) / 5
    assert arrays.next_states[first, names.index("satisfaction")] == pytest.approx(expected_sat, abs=1e-6)
    assert arrays.rewards[first] == pytest.approx(float(rating >= 4))
    cat = catalogue().category[int(ratings.sort("userId", "timestamp")["movieId"][0])]
    assert arrays.next_states[first, names.index(f"recent_{CATEGORIES[cat]}")] == 1.0


def _stored(store: DecisionStore) -> pl.DataFrame:
    return store.con.sql("SELECT * EXCLUDE (source_file, source_row) FROM steps_recommender ORDER BY 1, 2").pl()


def test_rows_out_of_order_give_the_same_steps(simulated, tmp_path: Path) -> None:
    """A log whose rows are shuffled (sessions interleaved, steps out of order) is put back in session order."""
    _, path = simulated
    shuffled = tmp_path / "shuffled.csv"
    pl.read_csv(path, infer_schema=False).sample(fraction=1.0, shuffle=True, seed=3).write_csv(shuffled)
    with DecisionStore(tmp_path / "a.duckdb") as a, DecisionStore(tmp_path / "b.duckdb") as b:
        ingest(RecommenderAdapter(), [path], a)
        ingest(RecommenderAdapter(), [shuffled], b)
        ordered, restored = _stored(a), _stored(b)
    assert restored.height == ordered.height > 0
    assert restored.equals(ordered)


def test_ratings_out_of_order_give_the_same_sessions(tmp_path: Path) -> None:
    """Sessions found by time gaps do not depend on the order of the rows in the file."""
    mapping = ColumnMapping.load(SAMPLES / "ratings_mapping.toml")
    shuffled = tmp_path / "ratings.csv"
    pl.read_csv(SAMPLES / "ratings_sample.csv").sample(fraction=1.0, shuffle=True, seed=4).write_csv(shuffled)
    with DecisionStore(tmp_path / "a.duckdb") as a, DecisionStore(tmp_path / "b.duckdb") as b:
        ingest(RecommenderAdapter(), [SAMPLES / "ratings_sample.csv"], a, mapping=mapping)
        ingest(RecommenderAdapter(), [shuffled], b, mapping=mapping)
        ordered, restored = _stored(a), _stored(b)
    assert restored.height == ordered.height > 0
    assert restored.equals(ordered)


def test_an_item_shown_twice_in_a_session_is_refused_and_loading_masks_shown_items(simulated, tmp_path: Path) -> None:
    _, path = simulated
    frame = pl.read_csv(path, infer_schema=False)
    # Row 4 shows the item of row 3 again in the same session: the domain shows each item once per session.
    assert frame["session_id"][3] == frame["session_id"][4]
    bad = _bad_copy(path, tmp_path / "repeat.csv", 4, "item_id", frame["item_id"][3])
    with DecisionStore(tmp_path / "store.duckdb") as store:
        with pytest.raises(IngestError, match="repeats within episode") as info:
            ingest(RecommenderAdapter(), [bad], store)
        assert (info.value.row, info.value.column) == (4, "action")
        ingest(RecommenderAdapter(), [path], store)
        arrays = store.load_arrays("recommender")
    masks = arrays.action_masks
    assert masks is not None and masks.shape == (arrays.n_steps, 240)
    taken = arrays.actions[:, 0].astype(int)
    for e in range(arrays.n_episodes):
        a, b = arrays.episode_starts[e], arrays.episode_ends[e]
        for t in range(a, b):
            assert set(np.flatnonzero(~masks[t])) == set(taken[a:t].tolist())
            assert masks[t, taken[t]]  # the logged item was available
