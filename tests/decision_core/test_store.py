"""The store refuses what it cannot read correctly and keeps one shape per domain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from decision_core.errors import StoreError
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature
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
        assert store.ensure_domain(spec()) == []  # same spec again is fine
        with pytest.raises(StoreError, match="different shape"):
            store.ensure_domain(spec(("x", "y")))


def test_a_shape_change_names_what_differs(tmp_path: Path):
    stored = DomainSpec(
        name="queue",
        version="1",
        state=(Feature("backlog"), Feature("sentiment"), Feature("hours")),
        outcomes=(OutcomeFeature("sentiment", 0.25),),
        actions=DiscreteActions(labels=("tier1", "tier2", "billing", "engineering")),
    )
    with DecisionStore(tmp_path / "s.duckdb") as store:
        store.ensure_domain(stored)
        for changed, expected in (
            (
                replace(stored, actions=DiscreteActions(labels=("tier1", "tier2", "billing", "engineering", "legal"))),
                "action labels: stored 4 (tier1, tier2, billing, engineering), "
                "new 5 (tier1, tier2, billing, engineering, legal)",
            ),
            (
                replace(stored, actions=DiscreteActions(labels=("tier2", "tier1", "billing", "engineering"))),
                "the stored action indices would name other actions",
            ),
            (
                replace(stored, state=(Feature("backlog"), Feature("sentiment"), Feature("age"))),
                "state features removed ['hours'], added ['age'] (stored 3 (backlog, sentiment, hours), "
                "new 3 (backlog, sentiment, age))",
            ),
            (
                replace(stored, actions=DiscreteActions(labels=stored.actions.labels, masked=True)),  # type: ignore[union-attr]
                "logged action masks: stored False, new True",
            ),
            (
                replace(stored, actions=BoxActions(names=("effort",), low=(0.0,), high=(1.0,))),
                "action space: stored discrete",
            ),
        ):
            with pytest.raises(StoreError) as info:
                store.ensure_domain(changed)
            assert "'queue' is stored in" in str(info.value) and expected in str(info.value), str(info.value)
        assert store.spec("queue") == stored


def test_other_spec_changes_are_applied_and_reported(tmp_path: Path):
    with DecisionStore(tmp_path / "s.duckdb") as store:
        store.ensure_domain(spec())
        retuned = replace(spec(), outcomes=(OutcomeFeature("x", 0.3),), reward="-abs(next.x)", description="toy")
        assert [str(c) for c in store.spec_changes(retuned)] == [
            "outcomes.x.tolerance: 0.1 -> 0.3",
            "reward: None -> '-abs(next.x)'",
            "description: '' -> 'toy'",
        ]
        assert store.spec("toy") == spec()  # asking writes nothing
        changes = store.ensure_domain(retuned)
        assert [(c.field, c.stored, c.new) for c in changes] == [
            ("outcomes.x.tolerance", 0.1, 0.3),
            ("reward", None, "-abs(next.x)"),
            ("description", "", "toy"),
        ]
        assert [c.affects_models for c in changes] == [True, True, False]
        assert store.spec("toy") == retuned
        assert store.ensure_domain(retuned) == []


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


def test_concatenated_arrays_keep_every_episode_back_to_back() -> None:
    from decision_core.store import DomainArrays

    def episodes(lengths: list[int], first: float) -> DomainArrays:
        n, ends = sum(lengths), np.cumsum(lengths)
        x = first + np.arange(n, dtype=np.float32)[:, None]
        return DomainArrays(
            spec=spec(),
            states=x,
            actions=np.zeros((n, 1), np.float32),
            next_states=x + 1,
            rewards=np.zeros(n, np.float32),
            propensities=np.full(n, 0.5, np.float32),
            terminated=np.zeros(n, np.bool_),
            truncated=np.isin(np.arange(n), ends - 1),
            action_masks=None,
            episode_starts=ends - np.array(lengths),
            episode_ends=ends,
        )

    logs, served = episodes([2, 3], 0.0), episodes([1, 2], 100.0)
    both = DomainArrays.concat([logs, served])
    assert both.n_steps == 8 and both.n_episodes == 4
    assert both.episode_starts.tolist() == [0, 2, 5, 6] and both.episode_ends.tolist() == [2, 5, 6, 8]
    assert both.states[both.episode_starts[2:], 0].tolist() == [100.0, 101.0]
    assert both.truncated.tolist() == [False, True, False, False, True, True, False, True]
    other = DomainArrays(**{**served.__dict__, "spec": spec(("y",))})
    with pytest.raises(ValueError, match="one domain spec"):
        DomainArrays.concat([logs, other])


# -- how steps are kept: rows, the explicit next states, and the steps view ------------------------------------


def _frame(toy: DomainSpec, episodes: dict[str, list[float]], *, odd: tuple[str, int] | None = None):
    """Steps of scalar-state episodes in the N+1 convention (``episodes[e]`` are its N+1 observations); ``odd``
    gives one (episode, step) a next state that is not its episode's next state (a log whose next observation
    differs)."""
    import polars as pl

    from decision_core.schema import steps_schema

    rows = []
    for episode, obs in episodes.items():
        for t in range(len(obs) - 1):
            following = obs[t + 1] + (0.5 if odd == (episode, t) else 0.0)
            rows.append(
                {
                    "episode_id": episode,
                    "step": t,
                    "state": [obs[t]],
                    "action": [float(t % 2)],
                    "action_mask": None,
                    "propensity": 0.5,
                    "reward": None,
                    "next_state": [following],
                    "terminated": t == len(obs) - 2,
                    "truncated": False,
                    "timestamp": None,
                    "source_adapter": "test",
                    "adapter_version": "1",
                    "source_file": "f",
                    "source_row": len(rows),
                }
            )
    return pl.DataFrame(rows, schema=steps_schema(toy))


def _insert(store: DecisionStore, toy: DomainSpec, frame, *, dedupe: bool = True) -> int:
    with store.transaction() as con:
        con.register("frame", frame)
        try:
            return store.insert_steps(toy, "frame", con, dedupe=dedupe)
        finally:
            con.unregister("frame")


def test_next_states_are_stored_only_where_the_following_step_does_not_give_them(tmp_path: Path):
    toy = spec()
    episodes = {"a": [0.0, 1.0, 2.0, 3.0], "b": [10.0, 11.0, 12.0], "c": [20.0, 21.0, 22.0, 23.0, 24.0]}
    frame = _frame(toy, episodes, odd=("c", 1))
    with DecisionStore(tmp_path / "s.duckdb") as store:
        # Episode c arrives in two writes (served traffic, or a later ingest continuing it).
        assert _insert(store, toy, frame.filter(~((frame["episode_id"] == "c") & (frame["step"] >= 2)))) == 7
        assert _insert(store, toy, frame) == 2  # the rest of c; everything else is already stored
        # Explicit: each episode's last step, c's odd step, and c's step 1 whose successor came later.
        explicit = store.con.execute(f"SELECT episode_id, step FROM {toy.next_table} ORDER BY ALL").fetchall()
        assert explicit == [("a", 2), ("b", 1), ("c", 1), ("c", 3)]
        arrays = store.load_arrays("toy")
        view = store.con.sql(f"SELECT * FROM {toy.table} ORDER BY episode_id, step").pl()
    order = frame.sort("episode_id", "step")
    assert view.equals(order.select(view.columns))  # the view gives back exactly the logged steps
    expected = np.array([row[0] for row in order["next_state"].to_list()], np.float32)
    np.testing.assert_array_equal(arrays.next_states[:, 0], expected)
    assert arrays.next_states[6, 0] == 22.5  # c's odd next state, not the following state


def test_a_store_missing_an_explicit_next_state_is_refused(tmp_path: Path):
    toy = spec()
    with DecisionStore(tmp_path / "s.duckdb") as store:
        _insert(store, toy, _frame(toy, {"a": [0.0, 1.0, 2.0]}))
        store.con.execute(f"DELETE FROM {toy.next_table}")
        with pytest.raises(StoreError, match=r"1 episode\(s\) have no next state for their last step"):
            store.load_arrays("toy")


def test_a_version_1_store_is_converted_when_opened_writable(tmp_path: Path):
    from decision_core.schema import steps_ddl

    toy = spec()
    frame = _frame(toy, {"a": [0.0, 1.0, 2.0], "b": [5.0, 6.0]}, odd=("a", 0))
    path = tmp_path / "v1.duckdb"
    with DecisionStore(path) as store:  # rewrite it into version 1's layout: next_state in every row
        store.ensure_domain(toy)
        con = store.con
        for table in (toy.table, toy.rows_table, toy.next_table):
            con.execute(f"DROP {'VIEW' if table == toy.table else 'TABLE'} {table}")
        con.execute(steps_ddl(toy))
        con.register("frame", frame)
        con.execute(f"INSERT INTO {toy.table} SELECT * FROM frame")
        con.execute("UPDATE schema_info SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="open it once writable"):
        DecisionStore(path, read_only=True)
    with DecisionStore(path) as store:
        arrays = store.load_arrays("toy")
        view = store.con.sql(f"SELECT * FROM {toy.table} ORDER BY episode_id, step").pl()
    np.testing.assert_array_equal(arrays.next_states[:, 0], [1.5, 2.0, 6.0])
    assert view.equals(frame.select(view.columns))
    with DecisionStore(path, read_only=True) as store:  # converted for good
        assert store.count_steps("toy") == 3


def test_marking_the_needed_next_states_in_the_frame_keeps_the_same_ones_as_the_window_pass(tmp_path: Path):
    from decision_core.store import next_state_needed

    toy = spec()
    frame = _frame(toy, {"a": [0.0, 1.0, 2.0, 3.0], "b": [5.0, 6.0], "c": [7.0, 8.0, 9.0]}, odd=("a", 1))
    marked = frame.with_columns(next_state_needed(frame).alias("keep"))
    assert marked["keep"].to_list() == [False, True, True, True, False, True]
    kept = []
    for n, kwargs in enumerate(({}, {"dedupe": False, "keep_next": "keep"})):
        with DecisionStore(tmp_path / f"{n}.duckdb") as store, store.transaction() as con:
            con.register("frame", marked)
            store.insert_steps(toy, "frame", con, **kwargs)
            kept.append(con.execute(f"SELECT * FROM {toy.next_table} ORDER BY ALL").fetchall())
    assert kept[0] == kept[1] and len(kept[0]) == 4


def test_a_store_another_process_holds_names_the_process_and_what_to_do(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "store.duckdb"
    DecisionStore(db).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(db)!r}); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=rf"in use by process {holder.pid} .*--db or DECISION_CORE_DB"):
            DecisionStore(db)
    finally:
        holder.communicate("")
