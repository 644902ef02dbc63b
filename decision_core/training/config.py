"""The typed training config: from a TOML/JSON file, then ``--set key=value`` overrides, validated once.

Top-level keys are :class:`TrainConfig` fields; the ``[agent]`` table (or ``agent.<field>`` overrides) goes to
the algorithm's own config class and is validated by it when the agent is built. Example::

    domain = "recommender"
    algo = "iql"
    steps = 20000
    task = "logged"

    [agent]
    lr = 3e-4
    expectile = 0.8
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from decision_core.errors import SpecError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data; logged in full as the run's params."""

    #: Domain to train on (its steps are read from the store once).
    domain: str
    #: Algorithm name (see ``decision_core.algos.ALGORITHMS``).
    algo: str
    #: Gradient steps (per process under distributed training).
    steps: int = 10_000
    #: Seed of the agent's initialisation and of batch sampling (each process adds its rank).
    seed: int = 0
    #: Overrides of the algorithm's config (validated by its config class).
    agent: dict[str, Any] = field(default_factory=dict)
    #: Where the networks train: "auto" (this process's GPU when torch sees one, else the CPU), "cpu", "cuda"
    #: (the GPU of this process's local rank) or "cuda:N". Evaluation, OPE and the saved model are unaffected.
    device: str = "auto"
    #: Precision of the training passes: "fp32", or "bf16" mixed precision (hidden layers in bfloat16; float32
    #: weights, losses and last layers; 1.6-1.9x the steps/s measured on a CPU with AVX-512 BF16).
    precision: str = "fp32"
    #: Goals evaluation reports on: a named goal of the domain spec, or None for all of them (and the
    #: simulator's goal set when the domain has one).
    goal_set: str | None = None
    #: Reward task for reward algorithms: an expression over the features, "logged", or None for the spec's.
    task: str | None = None
    #: Steps between metric logs.
    log_every: int = 100
    #: Steps between evaluations (simulator when available, OPE always); 0 evaluates only at the end.
    eval_every: int = 0
    #: Steps between checkpoints; 0 checkpoints only at evaluations and at the end.
    checkpoint_every: int = 1000
    #: Simulator episodes per goal (and for the reward task) in each evaluation.
    eval_episodes: int = 50
    #: OPE estimators to run at the end (None: every one the data supports).
    ope_estimators: tuple[str, ...] | None = None
    #: OPE estimators of the periodic evaluations (None: the cheap ones, snips and pdwis, or fqe when the logs
    #: lack propensities, and the domain's own estimator unless it fits a Q model per policy). The estimator
    #: ``keep`` picks by always runs (FQE: one fit per evaluation).
    ope_periodic: tuple[str, ...] | None = None
    #: Discount of the OPE return (1.0: the episode's total, as the simulator reports it).
    ope_gamma: float = 1.0
    #: Episodes OPE uses (a random subset when the logs hold more).
    ope_episodes: int = 2000
    #: Gradient steps of the fitted Q model used by FQE and DR.
    fqe_steps: int = 2000
    #: Gradient steps of the dynamics model used by the model-based estimator (mb): one fit per task (per goal
    #: for goal-conditioned agents), about 12 s for 3000 steps on 100k steps of logs on one thread.
    model_steps: int = 3000
    #: How mb rolls the episodes out in the dynamics ensemble: "every" member (the interval takes in their
    #: disagreement) or "one" drawn at random (rollouts about three times cheaper; see docs/ope.md).
    model_rollouts: str = "every"
    #: Refits of FQE's Q model and mb's dynamics model on bootstrap resamples of the episodes at the final OPE, for
    #: intervals that include the models' own error (each one more fit per policy and task). 0: the interval
    #: resamples episodes under one fitted model, which covers the spread over start states only.
    ope_refits: int = 0
    #: Exploration of the evaluated (served) policy: epsilon-greedy and/or softmax temperature; both off = greedy.
    ope_epsilon: float = 0.0
    ope_temperature: float | None = None
    #: MLflow experiment (default "decision-core/<domain>") and run name.
    experiment: str | None = None
    run_name: str | None = None
    #: Which weights the run logs and registers: "last" (after the last step), or "best:<metric>", the evaluation
    #: (periodic ones and the one at the end) with the highest value of that logged metric, e.g.
    #: "best:eval/normalised_score" (the simulator's) or, without a simulator, "best:ope" (the domain's own
    #: estimator) or a named one, "best:ope/fqe" (FQE measured to rank well on inventory and badly on the
    #: recommender: check OPE on the domain first). Offline training can peak early and decline (see
    #: docs/algorithms.md); the checkpoint for resuming stays the last.
    keep: str = "last"
    #: Register the final model in the Model Registry (under ``model_name``, default the domain name).
    register: bool = True
    model_name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the field and the rule."""
        from decision_core.ope.model import ROLLOUTS

        rules: list[tuple[bool, str, str]] = [
            (bool(self.domain) and isinstance(self.domain, str), "domain", "must be a domain name"),
            (bool(self.algo) and isinstance(self.algo, str), "algo", "must be an algorithm name"),
            (isinstance(self.steps, int) and self.steps >= 1, "steps", "must be an integer >= 1"),
            (isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an integer >= 0"),
            (isinstance(self.agent, dict), "agent", "must be a table of the algorithm's config fields"),
            (
                isinstance(self.device, str) and self.device.split(":")[0] in ("auto", "cpu", "cuda"),
                "device",
                "must be 'auto', 'cpu', 'cuda' or 'cuda:N'",
            ),
            (self.precision in ("fp32", "bf16"), "precision", "must be 'fp32' or 'bf16'"),
            (self.log_every >= 1, "log_every", "must be >= 1"),
            (self.eval_every >= 0, "eval_every", "must be >= 0 (0: only at the end)"),
            (self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0"),
            (self.eval_episodes >= 2, "eval_episodes", "must be >= 2"),
            (0.0 < self.ope_gamma <= 1.0, "ope_gamma", "must be in (0, 1]"),
            (self.ope_episodes >= 2, "ope_episodes", "must be >= 2"),
            (self.fqe_steps >= 1, "fqe_steps", "must be >= 1"),
            (self.model_steps >= 1, "model_steps", "must be >= 1"),
            (self.model_rollouts in ROLLOUTS, "model_rollouts", f"must be one of {', '.join(ROLLOUTS)}"),
            (isinstance(self.ope_refits, int) and self.ope_refits >= 0, "ope_refits", "must be an integer >= 0"),
            (0.0 <= self.ope_epsilon <= 1.0, "ope_epsilon", "must be in [0, 1]"),
            (self.ope_temperature is None or self.ope_temperature > 0, "ope_temperature", "must be > 0"),
            (
                isinstance(self.keep, str)
                and (self.keep in ("last", "best:ope") or (self.keep.startswith("best:") and "/" in self.keep)),
                "keep",
                "must be 'last', 'best:ope' (the domain's own OPE estimator) or 'best:<a logged metric>' "
                "(e.g. 'best:eval/normalised_score')",
            ),
        ]
        for ok, name, rule in rules:
            if not ok:
                raise SpecError(f"training config: '{name}' {rule} (got {getattr(self, name)!r})")
        if self.keep != "last" and self.eval_every == 0:
            raise SpecError(
                f"training config: 'keep' = {self.keep!r} picks among the periodic evaluations, but 'eval_every' is 0; "
                f"set eval_every (e.g. steps / 10) or keep = 'last'"
            )
        for name in ("ope_estimators", "ope_periodic"):
            chosen = getattr(self, name)
            if chosen is None:
                continue
            from decision_core.ope.estimators import ESTIMATORS

            unknown = [e for e in chosen if e not in ESTIMATORS]
            if unknown:
                raise SpecError(
                    f"training config: '{name}' names unknown {unknown}; choose from {', '.join(ESTIMATORS)}"
                )

    # -- derived ----------------------------------------------------------------------------------------------
    @property
    def experiment_name(self) -> str:
        return self.experiment or f"decision-core/{self.domain}"

    @property
    def registered_name(self) -> str:
        return self.model_name or self.domain

    @property
    def keep_metric(self) -> str | None:
        """The metric that picks the kept weights ("best:<metric>"), or None to keep the last."""
        return self.keep.removeprefix("best:") if self.keep.startswith("best:") else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("ope_estimators", "ope_periodic"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def flat_params(self) -> dict[str, str]:
        """The config as flat string params (``agent.lr`` etc.) for tracking."""
        out: dict[str, str] = {}
        for key, value in self.to_dict().items():
            if key == "agent":
                for k, v in value.items():
                    out[f"agent.{k}"] = json.dumps(v) if not isinstance(v, str) else v
            else:
                out[key] = json.dumps(value) if not isinstance(value, str) else value
        return out

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"{source}: unknown keys {unknown}; known keys: {', '.join(sorted(known))}")
        missing = [k for k in ("domain", "algo") if k not in data]
        if missing:
            raise SpecError(f"{source}: missing {missing}; give them in the file or as --domain/--algo")
        values = dict(data)
        for name in ("steps", "seed", "log_every", "eval_every", "checkpoint_every", "eval_episodes",
                     "ope_episodes", "fqe_steps", "model_steps", "ope_refits"):  # fmt: skip
            if name in values and not (isinstance(values[name], int) and not isinstance(values[name], bool)):
                raise SpecError(f"{source}: '{name}' must be an integer, got {values[name]!r}")
        for name in ("ope_gamma", "ope_epsilon", "ope_temperature"):
            v = values.get(name)
            if v is not None and not isinstance(v, bool) and isinstance(v, int | float):
                values[name] = float(v)
            elif v is not None:
                raise SpecError(f"{source}: '{name}' must be a number, got {v!r}")
        for name in ("ope_estimators", "ope_periodic"):
            if values.get(name) is not None:
                est = values[name]
                values[name] = tuple([est] if isinstance(est, str) else est)
        if "agent" in values and not isinstance(values["agent"], dict):
            raise SpecError(f"{source}: 'agent' must be a table of the algorithm's config fields")
        for name in ("domain", "algo", "goal_set", "task", "experiment", "run_name", "model_name", "keep",
                     "model_rollouts"):  # fmt: skip
            if values.get(name) is not None and not isinstance(values[name], str):
                raise SpecError(f"{source}: '{name}' must be a string, got {values[name]!r}")
        if "register" in values and not isinstance(values["register"], bool):
            raise SpecError(f"{source}: 'register' must be true or false, got {values['register']!r}")
        return cls(**values)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        data = self.to_dict()
        data.update(overrides)
        return TrainConfig.from_dict(data, source="overrides")

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a TOML or JSON config file, with errors naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read config file {p}: {exc}") from exc
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise SpecError(f"config file {p} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"config file {p} must hold a table of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"agent.lr=1e-3"`` -> (["agent", "lr"], 0.001); values are TOML literals, else plain strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set '{text}' must have the form key=value (e.g. steps=5000 or agent.lr=1e-3)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def build_config(
    *,
    file: str | Path | None = None,
    sets: list[str] | None = None,
    **flags: Any,
) -> TrainConfig:
    """Config from ``file`` (optional), then flags that are not None, then ``--set`` overrides."""
    data: dict[str, Any] = read_config_file(file) if file is not None else {}
    source = str(file) if file is not None else "flags"
    for key, value in flags.items():
        if value is not None:
            data[key] = value
    for text in sets or []:
        path, value = parse_override(text)
        target = data
        for part in path[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise SpecError(f"--set '{text}': '{part}' is not a table")
            target = nested
        target[path[-1]] = value
        source = f"{source} + --set"
    return TrainConfig.from_dict(data, source=source)
