"""The common state-action-outcome schema, defined once.

A :class:`DomainSpec` describes one domain: its state features, the **outcome features** goals are stated over
(a subset of the state, each with a tolerance that decides "reached"), its action space and an optional reward.
From a spec this module derives the polars schema of the steps table (:func:`steps_schema`), the DuckDB DDL
(:func:`steps_ddl`, and :func:`store_ddl` for how a store keeps it) and the row-level validation every adapter's
output goes through (``adapters/ingest.py``).

Convention: every step row carries both ``state`` and ``next_state`` (the observation after the action), so an
episode of N actions is N rows; the N+1-th observation is the last row's ``next_state``. ``terminated`` marks a
true end of the task (no bootstrapping past it); ``truncated`` marks a cut (time limit, end of the log).

A store keeps a row's ``next_state`` only where it is not already the ``state`` of the episode's next step (the
episode's last step, or logs whose next observation differs): ``steps_<domain>_rows`` holds every column but
``next_state``, ``steps_<domain>_next`` the explicit next states, and the view ``steps_<domain>`` joins them back
into the steps table above. Stored that way a domain takes about half the bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from decision_core.errors import SpecError

#: Version of the storage layout; stored in every DuckDB store and checked when it is opened.
SCHEMA_VERSION = 2

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")


@dataclass(frozen=True)
class Feature:
    """One state feature. ``dtype`` is the logical type; every feature is stored as float32."""

    name: str
    dtype: Literal["float", "int", "bool"] = "float"
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class OutcomeFeature:
    """A state feature goals may be stated over; reached when ``|achieved - goal| <= tolerance``."""

    name: str
    tolerance: float
    description: str = ""


@dataclass(frozen=True)
class DiscreteActions:
    """``len(labels)`` actions; stored as the index in a length-1 action vector.

    ``masked`` says the logs carry a per-step mask of the actions that were available. ``once_per_episode`` is a
    rule of the domain instead of a logged column: an action taken in an episode is unavailable for the rest of
    it (an item already shown in a session, a question already asked). Loading derives the masks from the
    episode's own actions (:func:`decision_core.store.once_per_episode_masks`); both together combine.
    """

    labels: tuple[str, ...]
    masked: bool = False
    kind: Literal["discrete"] = "discrete"
    once_per_episode: bool = False

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return 1


@dataclass(frozen=True)
class BoxActions:
    """A continuous action vector with per-dimension bounds."""

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    kind: Literal["continuous"] = "continuous"

    @property
    def dim(self) -> int:
        return len(self.names)


ActionSpace = DiscreteActions | BoxActions


#: The off-policy estimators of :mod:`decision_core.ope`, in its order; a spec's ``ope_estimator`` names one.
OPE_ESTIMATORS: tuple[str, ...] = ("ips", "snips", "pdwis", "dr", "wdr", "fqe", "mb")


#: The spec fields that say how a domain is described and evaluated, not what its steps are
#: (:meth:`DomainSpec.same_data` ignores them).
DESCRIBED_FIELDS = frozenset({"description", "goals", "ope_estimator"})


@dataclass(frozen=True)
class DomainSpec:
    """Everything the core needs to know about a domain; serialisable to and from JSON."""

    name: str
    version: str
    state: tuple[Feature, ...]
    outcomes: tuple[OutcomeFeature, ...]
    actions: ActionSpace
    #: Optional reward definition: an expression over state/next-state features (see
    #: ``decision_core.reward``), or ``"logged"`` when the logs' reward column is the task's reward.
    reward: str | None = None
    description: str = ""
    #: Named goal sets the domain defines (name -> {outcome feature: target}); used for evaluation.
    goals: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The off-policy estimator that judges policies on this domain (one of :data:`OPE_ESTIMATORS`), as checked
    #: against its simulator or held-out outcomes; ``decision-core select``, ``ope --baseline`` and the
    #: fine-tuning guard use it when none is named. ``None``: SNIPS where the logs have propensities, else FQE.
    ope_estimator: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SpecError` naming the field that breaks a rule."""
        if not _NAME.match(self.name):
            raise SpecError(
                f"domain name '{self.name}' must match {_NAME.pattern} (lowercase, digits, '_'; it names tables)"
            )
        if not self.state:
            raise SpecError(f"domain '{self.name}': state must have at least one feature")
        names = [f.name for f in self.state]
        for f in self.state:
            if not _FEATURE_NAME.match(f.name):
                raise SpecError(f"domain '{self.name}': state feature name '{f.name}' is not a valid identifier")
            if f.dtype not in ("float", "int", "bool"):
                raise SpecError(f"domain '{self.name}': state feature '{f.name}' has unknown dtype '{f.dtype}'")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"domain '{self.name}': duplicate state feature names {dupes}")
        if not self.outcomes:
            raise SpecError(f"domain '{self.name}': declare at least one outcome feature (goals are stated over them)")
        for o in self.outcomes:
            if o.name not in names:
                raise SpecError(
                    f"domain '{self.name}': outcome feature '{o.name}' is not a state feature; "
                    f"outcomes must be a subset of the state ({', '.join(names)})"
                )
            if not (math.isfinite(o.tolerance) and o.tolerance >= 0):
                raise SpecError(f"domain '{self.name}': outcome '{o.name}' tolerance must be finite and >= 0")
        acts = self.actions
        if isinstance(acts, DiscreteActions):
            if len(acts.labels) < 2:
                raise SpecError(f"domain '{self.name}': a discrete action space needs at least 2 labels")
            if len(set(acts.labels)) != len(acts.labels):
                raise SpecError(f"domain '{self.name}': discrete action labels must be unique")
        elif isinstance(acts, BoxActions):
            if not acts.names or not (len(acts.names) == len(acts.low) == len(acts.high)):
                raise SpecError(f"domain '{self.name}': box actions need names, low and high of equal length")
            for n, lo, hi in zip(acts.names, acts.low, acts.high, strict=True):
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise SpecError(f"domain '{self.name}': action '{n}' bounds must be finite with low < high")
        else:
            raise SpecError(f"domain '{self.name}': actions must be DiscreteActions or BoxActions")
        if self.ope_estimator is not None and self.ope_estimator not in OPE_ESTIMATORS:
            raise SpecError(
                f"domain '{self.name}': ope_estimator '{self.ope_estimator}' is not an OPE estimator; choose from "
                f"{', '.join(OPE_ESTIMATORS)}"
            )
        outcome_names = {o.name for o in self.outcomes}
        for goal_name, goal in self.goals.items():
            unknown = sorted(set(goal) - outcome_names)
            if unknown:
                raise SpecError(
                    f"domain '{self.name}': goal '{goal_name}' names {unknown}, which are not outcome features "
                    f"({', '.join(sorted(outcome_names))})"
                )

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def state_names(self) -> list[str]:
        return [f.name for f in self.state]

    @property
    def outcome_names(self) -> list[str]:
        return [o.name for o in self.outcomes]

    @property
    def state_dim(self) -> int:
        return len(self.state)

    @property
    def action_dim(self) -> int:
        return self.actions.dim

    @property
    def discrete(self) -> bool:
        return isinstance(self.actions, DiscreteActions)

    @property
    def n_actions(self) -> int:
        """Number of discrete actions (0 for a continuous space)."""
        return self.actions.n if isinstance(self.actions, DiscreteActions) else 0

    @property
    def masked(self) -> bool:
        """Whether the logs carry a per-step action mask (a column of the steps table)."""
        return isinstance(self.actions, DiscreteActions) and self.actions.masked

    @property
    def once_per_episode(self) -> bool:
        return isinstance(self.actions, DiscreteActions) and self.actions.once_per_episode

    @property
    def has_action_masks(self) -> bool:
        """Whether decisions are made under an availability mask: logged, derived from the episode, or both."""
        return self.masked or self.once_per_episode

    @property
    def outcome_index(self) -> np.ndarray:
        """Indices of the outcome features in the state vector."""
        pos = {n: i for i, n in enumerate(self.state_names)}
        return np.array([pos[o.name] for o in self.outcomes], dtype=np.int64)

    @property
    def tolerances(self) -> np.ndarray:
        return np.array([o.tolerance for o in self.outcomes], dtype=np.float32)

    @property
    def table(self) -> str:
        """Name of this domain's steps table (a view, in a store) with every column of :data:`STEP_COLUMNS`."""
        return f"steps_{self.name}"

    @property
    def rows_table(self) -> str:
        """The store's table of steps without ``next_state`` (:data:`ROW_COLUMNS`); see :func:`store_ddl`."""
        return f"steps_{self.name}_rows"

    @property
    def next_table(self) -> str:
        """The store's table of the next states that are not the following step's state; see :func:`store_ddl`."""
        return f"steps_{self.name}_next"

    def same_data(self, other: DomainSpec) -> bool:
        """Whether ``other`` describes the same steps: equal but for how the domain is described and evaluated
        (its description, named goals and ``ope_estimator``), which a model trained on one can serve under the
        other."""

        def steps(spec: DomainSpec) -> dict[str, Any]:
            return {k: v for k, v in spec.to_dict().items() if k not in DESCRIBED_FIELDS}

        return steps(self) == steps(other)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["ope_estimator"] is None:  # absent rather than null: a spec that names none reads as it always has
            del d["ope_estimator"]
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainSpec:
        try:
            acts = dict(d["actions"])
            kind = acts.pop("kind", "discrete")
            if kind == "discrete":
                actions: ActionSpace = DiscreteActions(
                    labels=tuple(acts["labels"]),
                    masked=bool(acts.get("masked")),
                    once_per_episode=bool(acts.get("once_per_episode")),
                )
            elif kind == "continuous":
                actions = BoxActions(
                    names=tuple(acts["names"]),
                    low=tuple(float(x) for x in acts["low"]),
                    high=tuple(float(x) for x in acts["high"]),
                )
            else:
                raise SpecError(f"unknown action kind '{kind}' (expected 'discrete' or 'continuous')")
            return cls(
                name=d["name"],
                version=str(d["version"]),
                state=tuple(Feature(**f) for f in d["state"]),
                outcomes=tuple(OutcomeFeature(**o) for o in d["outcomes"]),
                actions=actions,
                reward=d.get("reward"),
                description=d.get("description", ""),
                goals={k: {kk: float(vv) for kk, vv in v.items()} for k, v in (d.get("goals") or {}).items()},
                ope_estimator=d.get("ope_estimator"),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"domain spec is missing or has a malformed field: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> DomainSpec:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        acts = self.actions
        if isinstance(acts, DiscreteActions):
            a = f"discrete[{acts.n}]" + (" masked" if acts.masked else "")
            a += " once per episode" if acts.once_per_episode else ""
        else:
            a = f"box[{acts.dim}]"
        judged = f"; judged by {self.ope_estimator}" if self.ope_estimator else ""
        return (
            f"{self.state_dim} state features, outcomes: {', '.join(self.outcome_names)}; actions: {a}; "
            f"reward: {self.reward or 'none'}{judged}"
        )


# -- the steps table ------------------------------------------------------------------------------------------

#: Columns every steps table has, in order, with the rule that applies; arrays are sized by the spec.
STEP_COLUMNS: tuple[str, ...] = (
    "episode_id",
    "step",
    "state",
    "action",
    "action_mask",
    "propensity",
    "reward",
    "next_state",
    "terminated",
    "truncated",
    "timestamp",
    "source_adapter",
    "adapter_version",
    "source_file",
    "source_row",
)

#: Columns of a store's rows table: all but ``next_state`` (see :func:`store_ddl`).
ROW_COLUMNS: tuple[str, ...] = tuple(c for c in STEP_COLUMNS if c != "next_state")

#: Columns that may be null.
NULLABLE_COLUMNS = frozenset({"action_mask", "propensity", "reward", "timestamp"})


def steps_schema(spec: DomainSpec) -> pl.Schema:
    """The polars schema of ``spec``'s steps table; the single source the DDL and validation derive from."""
    s, a = spec.state_dim, spec.action_dim
    k = spec.n_actions if spec.masked else 1
    return pl.Schema(
        {
            "episode_id": pl.String(),
            "step": pl.Int32(),
            "state": pl.Array(pl.Float32(), s),
            "action": pl.Array(pl.Float32(), a),
            "action_mask": pl.Array(pl.Boolean(), k),
            "propensity": pl.Float64(),
            "reward": pl.Float64(),
            "next_state": pl.Array(pl.Float32(), s),
            "terminated": pl.Boolean(),
            "truncated": pl.Boolean(),
            "timestamp": pl.Datetime("us"),
            "source_adapter": pl.String(),
            "adapter_version": pl.String(),
            "source_file": pl.String(),
            "source_row": pl.Int64(),
        }
    )


def _duckdb_type(dtype: Any) -> str:
    """DuckDB type of a polars dtype (an instance, or a class as polars gives for an array's inner type)."""
    if isinstance(dtype, pl.Array):
        return f"{_duckdb_type(dtype.inner)}[{dtype.size}]"
    table: dict[type[pl.DataType], str] = {
        pl.String: "VARCHAR",
        pl.Int32: "INTEGER",
        pl.Int64: "BIGINT",
        pl.Float32: "FLOAT",
        pl.Float64: "DOUBLE",
        pl.Boolean: "BOOLEAN",
        pl.Datetime: "TIMESTAMP",
    }
    try:
        return table[dtype if isinstance(dtype, type) else type(dtype)]
    except KeyError as exc:  # pragma: no cover - guarded by steps_schema
        raise SpecError(f"no DuckDB type for polars dtype {dtype}") from exc


def steps_ddl(
    spec: DomainSpec, table: str | None = None, *, temporary: bool = False, columns: tuple[str, ...] = STEP_COLUMNS
) -> str:
    """``CREATE TABLE`` statement for ``spec``'s steps table (or just its ``columns``), from :func:`steps_schema`."""
    schema = steps_schema(spec)
    cols = []
    for name in columns:
        null = "" if name in NULLABLE_COLUMNS else " NOT NULL"
        cols.append(f"  {name} {_duckdb_type(schema[name])}{null}")
    kind = "TEMP TABLE" if temporary else "TABLE"
    return f"CREATE {kind} IF NOT EXISTS {table or spec.table} (\n" + ",\n".join(cols) + "\n)"


def store_ddl(spec: DomainSpec) -> list[str]:
    """How a store keeps ``spec``'s steps: the rows table, the explicit next states, and the steps view.

    A step's next state is the ``state`` of the row that follows it in its episode unless the next-states table
    holds one for it; writers (:meth:`~decision_core.store.DecisionStore.insert_steps`) store one wherever the
    following row is missing or differs, so the view always gives the logged ``next_state``.
    """
    next_type = _duckdb_type(steps_schema(spec)["next_state"])
    rows, explicit = spec.rows_table, spec.next_table
    # Inner and anti joins only: DuckDB mishandles NULL fixed-size arrays coming out of an outer join.
    stored = ", ".join("x.next_state" if c == "next_state" else f"r.{c}" for c in STEP_COLUMNS)
    following = ", ".join("f.state AS next_state" if c == "next_state" else f"r.{c}" for c in STEP_COLUMNS)
    return [
        steps_ddl(spec, rows, columns=ROW_COLUMNS),
        f"CREATE TABLE IF NOT EXISTS {explicit} (episode_id VARCHAR NOT NULL, step INTEGER NOT NULL, "
        f"next_state {next_type} NOT NULL)",
        f"CREATE VIEW IF NOT EXISTS {spec.table} AS "
        f"SELECT {stored} FROM {rows} r JOIN {explicit} x ON r.episode_id = x.episode_id AND r.step = x.step "
        f"UNION ALL SELECT {following} FROM "
        f"(SELECT * FROM {rows} r ANTI JOIN {explicit} x ON r.episode_id = x.episode_id AND r.step = x.step) r "
        f"JOIN {rows} f ON f.episode_id = r.episode_id AND f.step = r.step + 1",
    ]
