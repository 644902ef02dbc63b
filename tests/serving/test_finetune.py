"""The fine-tuning guard's verdict on a candidate against the champion, on served steps."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from decision_core.algos import Exploration, create_agent
from decision_core.data.dataset import FeatureStats, OfflineDataset
from decision_core.ope import ModelConfig
from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore, DomainArrays
from serving.finetune import guard_estimator, judge

from .conftest import fill_store, walk_episodes, walk_spec

UP, DOWN = 2.0, 0.0


def served(path: Path, spec: DomainSpec, frame: pl.DataFrame) -> DomainArrays:
    """The served steps as the worker reads them from its snapshot store."""
    fill_store(path, spec, frame)
    with DecisionStore(path, read_only=True) as store:
        return store.load_arrays(spec.name)


def cloned(arrays: DomainArrays, spec: DomainSpec, action: float) -> object:
    """A BC agent that learned to take ``action`` everywhere."""
    acting = DomainArrays(**{**arrays.__dict__, "actions": np.full_like(arrays.actions, action)})
    agent = create_agent("bc", spec, FeatureStats.compute(arrays.states, spec), {"hidden_dims": [16]}, seed=0)
    sampler = agent.sampler(OfflineDataset(acting), seed=0)
    for _ in range(150):
        agent.update(sampler.sample(64))
    return agent


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[DomainSpec, DomainArrays, object, object]:
    spec = walk_spec()
    frame = walk_episodes(spec, 150, 5, np.random.default_rng(0))  # a uniform logging policy, propensity 1/3
    arrays = served(tmp_path_factory.mktemp("served") / "new.duckdb", spec, frame)
    return spec, arrays, cloned(arrays, spec, UP), cloned(arrays, spec, DOWN)


def verdict(new: DomainArrays, candidate: object, champion: object, **changes: object):  # type: ignore[no-untyped-def]
    args = {
        "goals": [],
        "exploration": Exploration(epsilon=0.3),
        "estimator": "snips",
        "confidence": 0.9,
        "min_episodes": 5,
        "min_ess": 0.0,
        "seed": 0,
        **changes,
    }
    return judge(new, candidate, champion, **args)  # type: ignore[arg-type]


def test_a_worse_candidate_is_rejected_with_the_difference_and_its_interval(setting) -> None:  # type: ignore[no-untyped-def]
    _, new, up, down = setting
    v = verdict(new, down, up)  # the reward is the next level: going down is worse
    assert not v.accepted
    assert v.reason.startswith("rejected: worse on reward: next.level: candidate - champion -"), v.reason
    assert v.metrics["ope/reward/difference/snips/ci_high"] < 0.0
    assert v.metrics["ope/reward/difference/snips"] == pytest.approx(
        v.metrics["ope/reward/candidate/snips"] - v.metrics["ope/reward/champion/snips"]
    )
    assert v.metrics["ope/reward/difference/snips/share_worse"] == 1.0
    better = verdict(new, up, down)
    assert better.accepted and better.reason.startswith("not worse within the interval: "), better.reason
    assert better.metrics["ope/reward/difference/snips/ci_low"] > 0.0


def test_a_reward_model_is_judged_on_the_task_it_was_trained_on(setting) -> None:  # type: ignore[no-untyped-def]
    _, new, up, down = setting
    # The same two policies, trained on the opposite task: going down is now the better one.
    flipped = [copy.copy(a) for a in (up, down)]
    for a in flipped:
        a.config = dataclasses.replace(a.config, reward="-next.level")  # type: ignore[attr-defined]
    up_flipped, down_flipped = flipped
    v = verdict(new, down_flipped, up_flipped)
    assert v.accepted and "reward: -next.level" in v.reason, v.reason
    assert not verdict(new, up_flipped, down_flipped).accepted


def test_the_champion_against_itself_is_accepted_and_too_little_evidence_is_not(setting) -> None:  # type: ignore[no-untyped-def]
    _, new, up, _ = setting
    same = verdict(new, up, up)
    assert same.accepted and same.metrics["ope/reward/difference/snips"] == 0.0
    assert "paired over 150 episodes" in same.reason
    few = verdict(new, up, up, min_episodes=151)
    assert not few.accepted and "only 150 new episodes; at least 151 are needed" in few.reason
    thin = verdict(new, up, up, min_ess=1e6)
    assert not thin.accepted and "not evaluable (effective sample size below finetune_min_ess" in thin.reason


def test_the_guard_asks_for_the_evidence_select_asks_for_by_default() -> None:
    from decision_core.training.select import MIN_ESS
    from serving.settings import ServingSettings

    assert ServingSettings.model_fields["finetune_min_ess"].default == MIN_ESS == 10.0


def test_the_guards_model_rolls_out_in_every_member_unless_told_otherwise(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    assert ServingSettings.model_fields["finetune_model_rollouts"].default == ModelConfig.rollouts == "every"
    assert (
        ServingSettings(model="m@champion", home=tmp_path, finetune_model_rollouts="one").finetune_model_rollouts
        == "one"
    )
    with pytest.raises(ValidationError, match="finetune_model_rollouts"):
        ServingSettings(model="m@champion", home=tmp_path, finetune_model_rollouts="all")


def test_a_model_based_guard_learns_the_dynamics_from_every_stored_step(setting, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec, logs, up, down = setting
    # The champion served: it always went up, so the new steps alone never show what going down does.
    new = served(tmp_path / "new.duckdb", spec, walk_episodes(spec, 40, 5, np.random.default_rng(1), action=2))
    history = DomainArrays.concat([logs, new])
    fast = ModelConfig(steps=400, members=2, hidden=(32, 32))
    v = verdict(new, down, up, estimator="mb", history=history, model=fast)
    assert not v.accepted and v.reason.startswith("rejected: worse on reward: next.level"), v.reason
    assert "mb, paired over 40 episodes" in v.reason
    # Served with epsilon 0.3 each drifts 0.7 a step its way: over 5 steps the returns differ by about 21 (the
    # line's ends clip a little). From the new steps alone the model called going down better (+0.5).
    assert -26.0 < v.metrics["ope/reward/difference/mb"] < -16.0
    assert verdict(new, up, down, estimator="mb", history=history, model=fast).accepted


def test_auto_judges_with_the_domain_specs_estimator(setting) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    spec, new, _, _ = setting
    assert guard_estimator("auto", new) == "snips" and guard_estimator("pdwis", new) == "pdwis"
    judged = dataclasses.replace(new, spec=dataclasses.replace(spec, ope_estimator="mb"))
    assert guard_estimator("auto", judged) == "mb"
