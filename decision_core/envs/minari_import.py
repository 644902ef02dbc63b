"""Import a local Minari dataset into the common schema (nothing is downloaded).

Minari stores each episode as N+1 observations and N actions, rewards, terminations and truncations, the
same convention as the steps table (N rows, each with ``state`` and ``next_state``). The domain spec is derived
from the dataset's spaces exactly as the gymnasium recorder does (:func:`~decision_core.envs.recorder.
spec_from_spaces`). When the episodes' ``infos`` carry a propensity (key ``propensity``), it is the one of the
action before each info (Minari's infos[t + 1] belongs to step t), and it is stored with the step.

Episode ids are ``<dataset id>:<episode id>``, so importing the same dataset again adds nothing. Everything is
validated first and written in one transaction: on an error nothing is stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from decision_core.envs.recorder import EpisodeWriter, Outcomes, spec_from_spaces
from decision_core.errors import SpecError, StoreError
from decision_core.store import DecisionStore

__all__ = ["MinariImportReport", "domain_name_for", "import_minari"]


@dataclass(frozen=True)
class MinariImportReport:
    domain: str
    dataset_id: str
    episodes: int
    steps: int
    steps_inserted: int


def domain_name_for(dataset_id: str) -> str:
    """A valid domain name from a Minari id: ``D4RL/door/human-v2`` -> ``d4rl_door_human_v2``."""
    name = re.sub(r"[^a-z0-9]+", "_", dataset_id.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"minari_{name}"
    return name[:63]


def _load(dataset: str | Path) -> Any:
    try:
        import minari
    except ImportError as exc:  # pragma: no cover - minari is an optional dependency
        raise SpecError("importing Minari datasets needs the 'minari' package: pip install 'minari[arrow]'") from exc
    path = Path(dataset)
    if path.is_dir():
        data = path / "data" if (path / "data").is_dir() else path
        try:
            return minari.MinariDataset(str(data))
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise StoreError(f"{path} is not a Minari dataset directory (with data/metadata.json): {exc}") from exc
    try:
        return minari.load_dataset(str(dataset), download=False)
    except (FileNotFoundError, ValueError) as exc:
        raise StoreError(
            f"no local Minari dataset '{dataset}': {exc}. Point MINARI_DATASETS_PATH at the folder holding it, or "
            f"pass the dataset's directory; datasets are not downloaded"
        ) from exc


def _flat(space: spaces.Space, data: Any, n: int) -> np.ndarray:
    """(n, D) float32 vectors of ``n`` stacked values of ``space`` (as :func:`observation_vector` lays them)."""
    if isinstance(space, spaces.Discrete):
        return np.asarray(data, np.float32).reshape(n, 1)
    if isinstance(space, spaces.Box):
        return np.asarray(data, np.float32).reshape(n, -1)

    # Composite spaces: Minari keeps them as nested dicts/tuples of arrays; flatten one step at a time.
    def item(value: Any, i: int) -> Any:
        if isinstance(value, dict):
            return {k: item(v, i) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return tuple(item(v, i) for v in value)
        return value[i]

    return np.stack([np.asarray(spaces.flatten(space, item(data, i)), np.float32) for i in range(n)])


def import_minari(
    dataset: str | Path,
    store: DecisionStore,
    *,
    domain: str | None = None,
    outcomes: Outcomes = None,
    tolerance: float = 0.05,
    propensity_key: str = "propensity",
    episode_indices: Sequence[int] | None = None,
    progress: bool = True,
) -> MinariImportReport:
    """Import the episodes of a local Minari dataset (an id under ``$MINARI_DATASETS_PATH`` or its directory)
    into ``store`` as domain ``domain`` (default: derived from the dataset id)."""
    ds = _load(dataset)
    dataset_id = str(ds.spec.dataset_id)
    name = domain or domain_name_for(dataset_id)
    obs_space, act_space = ds.observation_space, ds.action_space
    spec = spec_from_spaces(
        name,
        obs_space,
        act_space,
        outcomes=outcomes,
        tolerance=tolerance,
        description=f"imported from Minari dataset {dataset_id}",
    )
    writer = EpisodeWriter(spec, adapter="minari", source=f"minari:{dataset_id}")
    indices = list(ds.episode_indices if episode_indices is None else episode_indices)
    episodes = steps = 0
    with Progress(
        TextColumn(f"importing {dataset_id}"), BarColumn(), MofNCompleteColumn(), disable=not progress
    ) as bar:
        task = bar.add_task("import", total=len(indices))
        for ep in ds.iterate_episodes(indices):
            n = len(ep.rewards)
            if n == 0:
                continue
            observations = _flat(obs_space, ep.observations, n + 1)
            if isinstance(act_space, spaces.Discrete):
                actions = (np.asarray(ep.actions, np.int64).reshape(n) - int(act_space.start)).astype(np.float32)
            else:
                actions = _flat(act_space, ep.actions, n)
            props = None
            if ep.infos and propensity_key in ep.infos:
                props = np.asarray(ep.infos[propensity_key], np.float64).reshape(-1)[1 : n + 1]
            writer.add(
                f"{dataset_id}:{ep.id}",
                observations,
                actions,
                np.asarray(ep.rewards, np.float64).reshape(n),
                terminated=bool(np.asarray(ep.terminations).reshape(-1)[-1]),
                propensities=props,
            )
            episodes += 1
            steps += n
            bar.advance(task)
    inserted = writer.flush(store)
    return MinariImportReport(name, dataset_id, episodes, steps, inserted)
