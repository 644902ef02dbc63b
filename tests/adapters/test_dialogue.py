"""The dialogue adapter: simulated turn logs round-trip to the simulator's belief states; bad rows are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adapters import get_adapter
from adapters.dialogue import DialogueAdapter
from adapters.ingest import ingest
from decision_core.envs import EpisodeBatch, get_simulator
from decision_core.envs.rollout import rollout
from decision_core.errors import IngestError
from decision_core.store import DecisionStore, fetch_one

SIM = get_simulator("dialogue")


@pytest.fixture
def store(tmp_path: Path):
    with DecisionStore(tmp_path / "store.duckdb") as s:
        yield s


def simulate(policy: str, batch: int, seed: int, max_steps: int | None = None) -> EpisodeBatch:
    return rollout(
        SIM.dynamics(),
        SIM.policies()[policy],
        batch=batch,
        max_steps=max_steps or SIM.max_steps,
        rng=np.random.default_rng(seed),
    )


def assert_round_trip(episodes: EpisodeBatch, arrays) -> None:
    ep = np.repeat(np.arange(len(episodes.lengths)), episodes.lengths)
    t = np.concatenate([np.arange(n) for n in episodes.lengths])
    assert arrays.n_steps == len(t) and arrays.n_episodes == len(episodes.lengths)
    np.testing.assert_array_equal(arrays.episode_ends - arrays.episode_starts, episodes.lengths)
    np.testing.assert_allclose(arrays.states, episodes.observations[ep, t], atol=1e-5)
    np.testing.assert_allclose(arrays.next_states, episodes.observations[ep, t + 1], atol=1e-5)
    np.testing.assert_allclose(arrays.actions[:, 0], episodes.actions[ep, t], atol=1e-5)
    np.testing.assert_allclose(arrays.propensities, episodes.propensities[ep, t], atol=1e-5)
    np.testing.assert_allclose(arrays.rewards, episodes.rewards[ep, t], atol=1e-5)
    np.testing.assert_array_equal(arrays.action_masks, episodes.extras["action_mask"][ep, t])
    last = t == episodes.lengths[ep] - 1
    np.testing.assert_array_equal(arrays.terminated, episodes.terminated[ep] & last)
    np.testing.assert_array_equal(arrays.truncated, ~episodes.terminated[ep] & last)


def rewrite(path: Path, edit) -> Path:
    """Apply ``edit`` to the raw file read as text columns (row order kept) and write it back."""
    frame = edit(pl.read_csv(path, infer_schema=False).with_row_index("row"))
    frame.drop("row").write_csv(path)
    return path


def set_cell(path: Path, row: int, column: str, value: str | None) -> Path:
    return rewrite(
        path,
        lambda f: f.with_columns(
            pl.when(pl.col("row") == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
        ),
    )


def first_row(path: Path, condition: pl.Expr) -> int:
    return int(pl.read_csv(path, infer_schema=False).with_row_index("row").filter(condition)["row"][0])


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    [path] = SIM.write_logs(simulate("behaviour", batch=6, seed=3), tmp_path / "raw", seed=3)
    return path


@pytest.mark.parametrize("policy", ["behaviour", "oracle", "random"])
def test_round_trip_reproduces_the_simulated_dialogues(policy: str, tmp_path: Path, store: DecisionStore) -> None:
    episodes = simulate(policy, batch=24, seed=1)
    files = SIM.write_logs(episodes, tmp_path / "raw", seed=5)
    report = ingest(get_adapter("dialogue"), files, store)
    assert report.steps_inserted == episodes.lengths.sum()
    assert_round_trip(episodes, store.load_arrays("dialogue"))


def test_dialogues_cut_by_the_time_limit_are_truncated(tmp_path: Path, store: DecisionStore) -> None:
    episodes = simulate("behaviour", batch=16, seed=2, max_steps=5)
    assert not episodes.terminated.all()
    ingest(DialogueAdapter(), SIM.write_logs(episodes, tmp_path / "raw", seed=6), store)
    arrays = store.load_arrays("dialogue")
    assert_round_trip(episodes, arrays)
    assert arrays.truncated.sum() == (~episodes.terminated).sum()


def test_turns_out_of_order_and_split_over_files_give_the_same_steps(tmp_path: Path) -> None:
    episodes = simulate("behaviour", batch=12, seed=4)
    [path] = SIM.write_logs(episodes, tmp_path / "raw", seed=7)
    frame = pl.read_csv(path, infer_schema=False)
    ids = frame["dialogue_id"].unique().sort()
    # Turns (one speaker's rows of one turn) in random order; the acts within a user turn keep theirs.
    key = pl.struct("dialogue_id", "turn", "speaker").hash(seed=1)
    shuffled = frame.sort(key, maintain_order=True)
    assert not shuffled["dialogue_id"].equals(frame["dialogue_id"])
    part_a, part_b = tmp_path / "a.csv", tmp_path / "b.csv"
    shuffled.filter(pl.col("dialogue_id").is_in(ids[:5].implode())).write_csv(part_a)
    shuffled.filter(~pl.col("dialogue_id").is_in(ids[:5].implode())).write_csv(part_b)
    with DecisionStore(tmp_path / "s.duckdb") as store:
        ingest(DialogueAdapter(), [part_a, part_b], store)
        assert_round_trip(episodes, store.load_arrays("dialogue"))


def test_logs_without_mask_success_or_propensity_still_load(tmp_path: Path, store: DecisionStore) -> None:
    episodes = simulate("behaviour", batch=10, seed=8)
    [path] = SIM.write_logs(episodes, tmp_path / "raw", seed=8)
    rewrite(path, lambda f: f.drop("action_mask", "task_success", "propensity"))
    ingest(DialogueAdapter(), [path], store)
    arrays = store.load_arrays("dialogue")
    # The mask the belief implies is the one the simulator logged.
    ep = np.repeat(np.arange(10), episodes.lengths)
    t = np.concatenate([np.arange(n) for n in episodes.lengths])
    np.testing.assert_array_equal(arrays.action_masks, episodes.extras["action_mask"][ep, t])
    np.testing.assert_allclose(arrays.states, episodes.observations[ep, t], atol=1e-5)
    assert not arrays.has_rewards and not arrays.has_propensities


def test_adapter_declares_the_simulator_spec() -> None:
    adapter = get_adapter("dialogue")
    assert adapter.spec() == SIM.spec() and adapter.spec().masked
    assert {"dialogue_id", "turn", "speaker", "act"} == {c for c, col in adapter.columns.items() if col.required}


def test_re_ingesting_the_same_log_adds_nothing(raw_file: Path, store: DecisionStore) -> None:
    first = ingest(DialogueAdapter(), [raw_file], store)
    again = ingest(DialogueAdapter(), [raw_file], store)
    assert first.steps_inserted > 0 and again.steps_inserted == 0
    assert store.count_steps("dialogue") == first.steps_inserted


# -- bad input: every error names the file, the row and the column -------------------------------------------


def test_missing_column(raw_file: Path, store: DecisionStore) -> None:
    rewrite(raw_file, lambda f: f.drop("speaker"))
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert err.value.file == str(raw_file) and err.value.column == "speaker" and "missing column" in str(err.value)


def test_missing_confidence_column(raw_file: Path, store: DecisionStore) -> None:
    rewrite(raw_file, lambda f: f.drop("confidence"))
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert err.value.file == str(raw_file) and err.value.column == "confidence"


def test_wrong_type(raw_file: Path, store: DecisionStore) -> None:
    set_cell(raw_file, 7, "turn", "seven")
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.file, err.value.row, err.value.column) == (str(raw_file), 7, "turn")
    assert "wrong type" in str(err.value) and "row 7" in str(err.value)


@pytest.mark.parametrize("bad", ["NaN", "", "1.5"])
def test_bad_confidence_on_an_inform(bad: str, raw_file: Path, store: DecisionStore) -> None:
    row = first_row(raw_file, (pl.col("act") == "inform") & (pl.col("turn") == "1"))
    set_cell(raw_file, row, "confidence", bad or None)
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.file, err.value.row, err.value.column) == (str(raw_file), row, "confidence")


@pytest.mark.parametrize(("act", "slot"), [("dance", None), ("request", "colour"), ("offer", "area")])
def test_action_outside_the_space(act: str, slot: str | None, raw_file: Path, store: DecisionStore) -> None:
    row = first_row(raw_file, (pl.col("speaker") == "system") & (pl.col("turn") == "2"))
    set_cell(raw_file, row, "act", act)
    set_cell(raw_file, row, "slot", slot)
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.file, err.value.row, err.value.column) == (str(raw_file), row, "act")
    assert "outside the space" in str(err.value)


def test_unknown_speaker(raw_file: Path, store: DecisionStore) -> None:
    set_cell(raw_file, 4, "speaker", "agent")
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.row, err.value.column) == (4, "speaker")


@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2"])
def test_propensity_outside_0_1(bad: str, raw_file: Path, store: DecisionStore) -> None:
    row = first_row(raw_file, (pl.col("speaker") == "system") & (pl.col("turn") == "3"))
    set_cell(raw_file, row, "propensity", bad)
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.file, err.value.row, err.value.column) == (str(raw_file), row, "propensity")
    assert "(0, 1]" in str(err.value)


def test_step_gap(raw_file: Path, store: DecisionStore) -> None:
    frame = pl.read_csv(raw_file, infer_schema=False).with_row_index("row")
    dialogue = frame["dialogue_id"][0]
    in_dialogue = pl.col("dialogue_id") == dialogue
    # The first system row after the missing turn-3 act, numbered as it will be in the rewritten file.
    after = frame.filter(~(in_dialogue & (pl.col("turn") == "3") & (pl.col("speaker") == "system")))
    expected = int(
        after.with_row_index("new").filter(in_dialogue & (pl.col("turn") == "4") & (pl.col("speaker") == "system"))[
            "new"
        ][0]
    )
    rewrite(raw_file, lambda f: f.filter(~(in_dialogue & (pl.col("turn") == "3") & (pl.col("speaker") == "system"))))
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.file, err.value.row, err.value.column) == (str(raw_file), expected, "step")
    assert "gap" in str(err.value)


def test_bad_action_mask(raw_file: Path, store: DecisionStore) -> None:
    row = first_row(raw_file, pl.col("speaker") == "system")
    set_cell(raw_file, row, "action_mask", "1101")
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [raw_file], store)
    assert (err.value.row, err.value.column) == (row, "action_mask")


def test_a_failed_ingest_of_several_files_writes_nothing(tmp_path: Path, store: DecisionStore) -> None:
    good_a = SIM.write_logs(simulate("behaviour", 5, seed=10), tmp_path / "a", seed=10)[0]
    good_b = SIM.write_logs(simulate("oracle", 5, seed=11), tmp_path / "b", seed=11)[0]
    bad = SIM.write_logs(simulate("random", 5, seed=12), tmp_path / "c", seed=12)[0]
    row = first_row(bad, pl.col("act") == "inform")
    set_cell(bad, row, "confidence", "NaN")
    with pytest.raises(IngestError) as err:
        ingest(DialogueAdapter(), [good_a, good_b, bad], store)
    assert err.value.file == str(bad) and err.value.row == row
    assert "dialogue" not in store.domains() or store.count_steps("dialogue") == 0
    assert fetch_one(store.con, "SELECT count(*) FROM ingests")[0] == 0
    # The good files alone then load.
    assert ingest(DialogueAdapter(), [good_a, good_b], store).steps_inserted > 0
