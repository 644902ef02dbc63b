"""Inventory: daily replenishment of one SKU per world, with lost sales and a multi-day lead time.

Each world is one SKU in one store, run for :data:`HORIZON` days. Hidden per SKU: a base demand level, a
weekday profile, a slow yearly season, the demand dispersion (negative binomial) and the day the run starts.
Observed per SKU: the lead time (2-4 days), the storage capacity and the planning system's (biased) baseline
forecast.

One day, in order:

1. the receipt due today arrives; what does not fit under the capacity is refused (and costs a return fee);
2. the state is observed (on hand *after* receipts, open orders by due day, demand history, service streak);
3. an order is placed (discrete: ``level * LOT`` units; continuous: any quantity in ``[0, MAX_ORDER]``);
   it arrives ``lead_time`` days later; a non-zero order costs a fixed fee;
4. demand is drawn; sales = min(on hand, demand); unmet demand is **lost** (no backlog);
5. holding cost is charged on the closing stock.

The reward is minus the day's cost (holding + lost sales + ordering fee + refusal fee). Episodes never end by
themselves (``terminated`` only comes from goal-reaching in evaluation); they are truncated at the horizon.
Every run starts with no open orders, so the adapter can rebuild the open-order pipeline from the logged orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from decision_core.envs.base import BatchDynamics, DomainSimulator, EpisodeBatch, Goal, SimPolicy
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature

HORIZON = 56  # days per run (8 weeks)
LOT = 5.0  # units per discrete order level
N_LEVELS = 13  # discrete orders 0, 5, ..., 60 units
MAX_ORDER = LOT * (N_LEVELS - 1)
MAX_LEAD = 4  # lead times are 2..MAX_LEAD days; open orders are due in 1..MAX_LEAD-1 days
CAPACITY_FLOOR = 50.0  # even slow movers get room for 50 units (every goal level fits)
STREAK_CAP = 28  # days_in_stock saturates here
IN_STOCK_DAYS = 14  # in_stock_14 = no lost sales on each of the last 14 days
DEMAND_WINDOW = 7
#: Costs per unit-day held, per unit of lost demand, per order placed, per unit refused at the dock.
HOLDING_COST, STOCKOUT_COST, ORDER_COST, REFUSAL_COST = 0.1, 3.0, 10.0, 0.2
COST_COLUMNS = ("holding_cost", "stockout_cost", "ordering_cost", "refusal_cost")
#: Monday = 0; 2025-01-06 is a Monday, so weekday = days since EPOCH mod 7.
EPOCH = date(2025, 1, 6)
WEEKDAY_SHAPE = np.array([-0.20, -0.25, -0.15, -0.05, 0.15, 0.40, 0.10])

STATE_FEATURES: tuple[Feature, ...] = (
    Feature("on_hand", unit="units", description="stock at decision time, after today's receipt"),
    Feature("pipeline_1", unit="units", description="open orders due tomorrow"),
    Feature("pipeline_2", unit="units", description="open orders due in 2 days"),
    Feature("pipeline_3", unit="units", description="open orders due in 3 days"),
    Feature("inventory_position", unit="units", description="on_hand + all open orders"),
    Feature("lead_time", "int", "days", "days from order to receipt (2-4)"),
    Feature("capacity", unit="units", description="storage capacity; receipts above it are refused"),
    Feature("base_forecast", unit="units/day", description="planning system's baseline daily demand"),
    Feature("demand_avg7", unit="units/day", description="mean demand of the last 7 days (base_forecast first)"),
    Feature("demand_last", unit="units", description="yesterday's demand (base_forecast on the first day)"),
    Feature("dow_sin", description="sin(2*pi*weekday/7), Monday = 0"),
    Feature("dow_cos", description="cos(2*pi*weekday/7)"),
    Feature("stockout", "bool", description="1 if demand was lost yesterday"),
    Feature("days_in_stock", "int", "days", f"days since demand was last lost (capped at {STREAK_CAP})"),
    Feature("in_stock_14", "bool", description=f"1 if no demand was lost on any of the last {IN_STOCK_DAYS} days"),
)
OUTCOMES = (
    OutcomeFeature("on_hand", 4.0, "stock level reached (units, +-4)"),
    OutcomeFeature("stockout", 0.5, "demand was lost yesterday"),
    OutcomeFeature("in_stock_14", 0.5, "two weeks without lost sales"),
)
GOALS: tuple[Goal, ...] = (
    Goal("restock_40", {"on_hand": 40.0}, description="bring stock to 40 units"),
    Goal("clear_stock", {"on_hand": 0.0}, description="run the SKU's stock down (phase-out)"),
    Goal("in_stock_2w", {"in_stock_14": 1.0}, hard=True, description="two weeks without lost sales"),
    Goal(
        "stock_40_in_stock_2w",
        {"on_hand": 40.0, "in_stock_14": 1.0},
        hard=True,
        description="40 units on hand after two weeks without lost sales",
    ),
    Goal(
        "lean_in_stock_2w",
        {"on_hand": 10.0, "in_stock_14": 1.0},
        hard=True,
        description="down to 10 units on hand after two weeks without lost sales",
    ),
)


def inventory_spec(continuous: bool = False) -> DomainSpec:
    """The inventory domain spec; ``continuous`` selects order quantities in ``[0, MAX_ORDER]``."""
    actions = (
        BoxActions(names=("order_qty",), low=(0.0,), high=(MAX_ORDER,))
        if continuous
        else DiscreteActions(labels=tuple(f"order_{int(i * LOT)}" for i in range(N_LEVELS)))
    )
    return DomainSpec(
        name="inventory_continuous" if continuous else "inventory",
        version="1",
        state=STATE_FEATURES,
        outcomes=OUTCOMES,
        actions=actions,
        reward="logged",
        description="Daily replenishment of one SKU: seasonal demand, lead time 2-4 days, lost sales, "
        "capacity; reward = -(holding + lost sales + ordering + refusal cost).",
        goals={g.name: dict(g.targets) for g in GOALS},
        ope_estimator="mb",  # docs/ope.md and docs/serving.md measure it against the simulator
    )


SPEC = inventory_spec(False)
COLUMN = {name: i for i, name in enumerate(SPEC.state_names)}  # state feature -> index
OUTCOME = {name: i for i, name in enumerate(SPEC.outcome_names)}  # outcome feature -> goal index
CONTINUOUS_SPEC = inventory_spec(True)


class InventoryDynamics(BatchDynamics):
    """B SKUs advanced one day per step; hidden demand parameters live here."""

    def __init__(self, *, continuous: bool = False) -> None:
        self.continuous = continuous
        self.batch = 0

    # -- hidden demand model -------------------------------------------------------------------------------
    def mean_demand(self, offsets: np.ndarray) -> np.ndarray:
        """(B, H) expected demand on days ``t + offsets`` (the oracle's privileged view)."""
        day = (self.start_day + self.t)[:, None] + offsets[None, :]
        weekday = WEEKDAY_SHAPE[day % 7] * self.weekday_amp[:, None]
        season = self.season_amp[:, None] * np.sin(2 * np.pi * (day + self.season_phase[:, None]) / 365.0)
        return self.mu[:, None] * (1.0 + weekday) * (1.0 + season)

    def demand_var(self, mean: np.ndarray) -> np.ndarray:
        return mean + mean**2 / self.dispersion[:, None]

    # -- contract -------------------------------------------------------------------------------------------
    def reset(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        self.batch = b = batch
        # Every world is drawn by reset_worlds; these are the arrays it fills.
        self.mu, self.weekday_amp, self.season_amp, self.season_phase = (np.zeros(b) for _ in range(4))
        self.dispersion, self.capacity, self.base_forecast = np.zeros(b), np.zeros(b), np.zeros(b)
        self.lead_time, self.start_day, self.t = (np.zeros(b, np.int64) for _ in range(3))
        self.on_hand, self.demand_last = np.zeros(b), np.zeros(b)
        self.stockout, self.streak, self.receipts, self.refused = (np.zeros(b) for _ in range(4))
        self.pipeline = np.zeros((b, MAX_LEAD))  # [:, k] = due in k+1 days
        self.demand_hist = np.zeros((b, DEMAND_WINDOW))  # ring buffer, slot t % 7
        self._info = self._period_info(*(np.zeros(b),) * 9)
        return self.reset_worlds(np.ones(b, np.bool_), rng)

    def reset_worlds(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Start new SKUs in the worlds where ``mask`` is True (per-world autoreset); the others go on.

        Over every world this draws exactly what a full :meth:`reset` draws. Arrays are replaced, not written in
        place, so observations and infos handed out before stay as they were.
        """
        keep = ~np.asarray(mask, np.bool_)
        n = int((~keep).sum())

        def fresh(name: str, values: np.ndarray | float) -> None:
            old = getattr(self, name)
            new = old.copy()
            new[~keep] = values
            setattr(self, name, new)

        mu = np.exp(rng.uniform(np.log(4.0), np.log(16.0), n))
        fresh("mu", mu)
        fresh("weekday_amp", rng.uniform(0.6, 1.4, n))
        fresh("season_amp", rng.uniform(0.0, 0.4, n))
        fresh("season_phase", rng.uniform(0.0, 365.0, n))
        fresh("dispersion", rng.uniform(3.0, 12.0, n))
        fresh("lead_time", rng.integers(2, MAX_LEAD + 1, n))
        capacity = np.round(np.maximum(mu * rng.uniform(6.0, 10.0, n), CAPACITY_FLOOR) / LOT) * LOT
        fresh("capacity", capacity)
        fresh("start_day", rng.integers(0, 365, n))
        fresh("t", 0)
        forecast = np.round(mu * rng.lognormal(0.0, 0.2, n), 1)
        fresh("base_forecast", forecast)
        fresh("on_hand", np.floor(capacity * rng.uniform(0.0, 0.7, n)))
        fresh("pipeline", 0.0)
        fresh("demand_hist", 0.0)
        fresh("demand_last", forecast)
        for name in ("stockout", "streak", "receipts", "refused"):
            fresh(name, 0.0)
        self._info = {k: np.where(keep, v, 0.0) for k, v in self._info.items()}
        return self.observe()

    def observe(self) -> np.ndarray:
        n = np.minimum(self.t, DEMAND_WINDOW)
        avg = np.where(n > 0, self.demand_hist.sum(axis=1) / np.maximum(n, 1), self.base_forecast)
        angle = 2 * np.pi * ((self.start_day + self.t) % 7) / 7.0
        pipe = self.pipeline[:, : MAX_LEAD - 1]
        return np.column_stack(
            [
                self.on_hand,
                pipe,
                self.on_hand + pipe.sum(axis=1),
                self.lead_time,
                self.capacity,
                self.base_forecast,
                avg,
                self.demand_last,
                np.sin(angle),
                np.cos(angle),
                self.stockout,
                self.streak,
                self.streak >= IN_STOCK_DAYS,
            ]
        ).astype(np.float32)

    def order_quantity(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, np.float64).reshape(self.batch, -1)[:, 0]
        return np.clip(a, 0.0, MAX_ORDER) if self.continuous else np.clip(np.rint(a), 0, N_LEVELS - 1) * LOT

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = np.arange(self.batch)
        qty = self.order_quantity(actions)
        self.pipeline[b, self.lead_time - 1] += qty
        mean = self.mean_demand(np.zeros(1, np.int64))[:, 0]
        demand = rng.negative_binomial(self.dispersion, self.dispersion / (self.dispersion + mean)).astype(float)
        sales = np.minimum(self.on_hand, demand)
        lost = demand - sales
        closing = self.on_hand - sales
        costs = (
            HOLDING_COST * closing,
            STOCKOUT_COST * lost,
            ORDER_COST * (qty > 0),
            REFUSAL_COST * self.refused,
        )
        reward = -(costs[0] + costs[1] + costs[2] + costs[3])
        self._info = self._period_info(qty, demand, sales, lost, closing, *costs)
        # Tomorrow's receipt; what exceeds the capacity is refused at the dock.
        arriving = self.pipeline[:, 0].copy()
        self.pipeline[:, :-1] = self.pipeline[:, 1:]
        self.pipeline[:, -1] = 0.0
        self.receipts = np.minimum(arriving, self.capacity - closing)
        self.refused = arriving - self.receipts
        self.on_hand = closing + self.receipts
        self.demand_hist[b, self.t % DEMAND_WINDOW] = demand
        self.demand_last = demand
        self.stockout = (lost > 0).astype(float)
        self.streak = np.where(lost > 0, 0.0, np.minimum(self.streak + 1, STREAK_CAP))
        self.t += 1
        return self.observe(), reward.astype(np.float32), np.zeros(self.batch, np.bool_)

    def _period_info(self, *values: np.ndarray) -> dict[str, np.ndarray]:
        names = ("order_qty", "demand", "sales", "lost_sales", "closing_stock", *COST_COLUMNS)
        return dict(zip(names, values, strict=True))

    def info(self) -> dict[str, np.ndarray]:
        """After a step: that day's flows and costs, plus the receipt/refusal at the start of the next day."""
        extra = {"receipts": self.receipts, "refused": self.refused, "start_day": self.start_day}
        return {k: np.asarray(v, np.float64) for k, v in {**self._info, **extra}.items()}


# -- policies ------------------------------------------------------------------------------------------------


def _inventory(dynamics: BatchDynamics) -> InventoryDynamics:
    if not isinstance(dynamics, InventoryDynamics):
        raise ValueError(f"inventory policies act on InventoryDynamics, got {type(dynamics).__name__}")
    return dynamics


def _as_actions(dyn: InventoryDynamics, qty: np.ndarray) -> np.ndarray:
    """Order quantities -> the action array of the dynamics' variant (level index or (B, 1) units)."""
    if dyn.continuous:
        return np.clip(qty, 0.0, MAX_ORDER).astype(np.float32)[:, None]
    return np.clip(np.rint(qty / LOT), 0, N_LEVELS - 1).astype(np.int64)


class BehaviourPolicy(SimPolicy):
    """Today's practice: order up to a fixed number of days of cover of recent demand, by hand.

    The planner ignores the lead time, the weekday pattern, the ordering fee and the capacity; a third of
    the time the order is nudged by a lot or two (also when nothing is due: a top-up), and one review in ten
    is skipped (no order). Continuous (bulk) orders have no lot rounding or skipped reviews; they are planned
    leaner (``COVER_DAYS_BULK``) and scatter around the target with a truncated normal (sd ``SPREAD`` units).
    """

    name = "behaviour"
    COVER_DAYS = 4.5
    COVER_DAYS_BULK = 4.0
    NUDGE: ClassVar[tuple[tuple[int, float], ...]] = ((-2, 0.04), (-1, 0.12), (0, 0.68), (1, 0.12), (2, 0.04))
    SKIP = 0.1
    SPREAD = 3.0

    def target(self, obs: np.ndarray, cover_days: float) -> np.ndarray:
        """Order-up-to quantity: ``cover_days`` of recent demand minus the inventory position."""
        position = obs[:, COLUMN["inventory_position"]].astype(np.float64)
        avg = obs[:, COLUMN["demand_avg7"]].astype(np.float64)
        return np.maximum(cover_days * avg - position, 0.0)

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        dyn = _inventory(dynamics)
        b = len(observations)
        if dyn.continuous:
            # Imported here: the adapter reads this module's spec, and scipy would add 0.2 s to every ingest.
            from scipy.special import ndtr, ndtri

            want = self.target(observations, self.COVER_DAYS_BULK)
            mu = np.clip(want, 0.0, MAX_ORDER)
            lo, hi = ndtr(-mu / self.SPREAD), ndtr((MAX_ORDER - mu) / self.SPREAD)
            z = ndtri(lo + rng.random(b) * (hi - lo))
            qty = np.clip(mu + self.SPREAD * z, 0.0, MAX_ORDER)
            dens = np.exp(-0.5 * ((qty - mu) / self.SPREAD) ** 2) / (self.SPREAD * np.sqrt(2 * np.pi) * (hi - lo))
            return qty.astype(np.float32)[:, None], dens.astype(np.float32)
        probs = self.level_probs(self.target(observations, self.COVER_DAYS))
        cum = probs.cumsum(axis=1)
        level = np.minimum((rng.random(b)[:, None] > cum).sum(axis=1), N_LEVELS - 1)
        return level.astype(np.int64), probs[np.arange(b), level].astype(np.float32)

    def level_probs(self, want: np.ndarray) -> np.ndarray:
        """(B, N_LEVELS) probability of each order level given the planner's target quantity."""
        b = len(want)
        base = np.clip(np.rint(want / LOT), 0, N_LEVELS - 1).astype(np.int64)
        probs = np.zeros((b, N_LEVELS))
        probs[:, 0] = self.SKIP
        rows = np.arange(b)
        for nudge, p in self.NUDGE:
            np.add.at(probs, (rows, np.clip(base + nudge, 0, N_LEVELS - 1)), (1 - self.SKIP) * p)
        return probs


class OraclePolicy(SimPolicy):
    """Knows the true demand model (the privileged anchor of normalised scores).

    Reward task: a forecast-driven (s, S) rule. It projects the closing stock on the day before today's order
    would land; if that will not cover the landing day plus a safety stock, it orders enough to cover an
    economic order cycle (sqrt(2 * fee / (holding * demand)) days), never more than fits under the capacity.
    ``Z`` and ``MAX_CYCLE`` were tuned by grid search on the reward task.
    Goals: while a service goal (``in_stock_14`` = 1) is pending it orders daily with a high safety stock;
    otherwise it lands each order so that on-hand stock equals the goal's level (or stops ordering for a
    stock-out goal).
    """

    name = "oracle"
    Z = 0.7
    Z_SERVICE = 2.5
    MAX_CYCLE = 7

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        dyn = _inventory(dynamics)
        b, lead = dyn.batch, dyn.lead_time[:, None]
        days = np.arange(MAX_LEAD + self.MAX_CYCLE + 1)[None, :]
        mean = dyn.mean_demand(days[0])
        var = dyn.demand_var(mean)
        # Expected closing stock the day before this order lands (lost sales floor it at 0).
        closing = dyn.on_hand.copy()
        for i in range(MAX_LEAD):
            arrival = dyn.pipeline[:, i - 1] if i > 0 else 0.0
            closing = np.where(i < dyn.lead_time, np.maximum(closing + arrival - mean[:, i], 0.0), closing)
        cycle = np.clip(np.rint(np.sqrt(2 * ORDER_COST / (HOLDING_COST * dyn.mu))), 1, self.MAX_CYCLE)
        z = np.full(b, self.Z)
        level = np.full(b, np.nan)  # on-hand level to land at (NaN: follow the reward rule)
        if goals is not None and goal_mask is not None:
            mask, g = np.asarray(goal_mask, np.bool_), np.asarray(goals, np.float64)
            on_hand, stockout, in_stock = (OUTCOME[n] for n in ("on_hand", "stockout", "in_stock_14"))
            pending = mask[:, in_stock] & (g[:, in_stock] > 0.5) & (dyn.streak < IN_STOCK_DAYS)
            z = np.where(pending, self.Z_SERVICE, z)
            cycle = np.where(pending, 1, cycle)
            level = np.where(mask[:, on_hand] & ~pending, g[:, on_hand], level)
            level = np.where(mask[:, stockout] & (g[:, stockout] > 0.5) & ~pending, 0.0, level)
        upto = days <= lead
        cover = (days >= lead) & (days < lead + cycle[:, None])
        need = mean[:, : MAX_LEAD + 1][np.arange(b), dyn.lead_time] + z * np.sqrt((var * upto).sum(axis=1))
        target = (mean * cover).sum(axis=1) + z * np.sqrt((var * (cover | upto)).sum(axis=1))
        rule = np.where(closing < need, np.maximum(target - closing, 0.0), 0.0)
        rule = np.minimum(rule, np.maximum(dyn.capacity - closing, 0.0))
        qty = np.where(np.isnan(level), rule, np.maximum(level - closing, 0.0))
        return _as_actions(dyn, qty), np.ones(b, np.float32)


class RandomPolicy(SimPolicy):
    """Uniform over the order levels (discrete) or over ``[0, MAX_ORDER]`` (continuous)."""

    name = "random"

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        dyn = _inventory(dynamics)
        b = len(observations)
        if dyn.continuous:
            qty = rng.uniform(0.0, MAX_ORDER, (b, 1)).astype(np.float32)
            return qty, np.full(b, 1.0 / MAX_ORDER, np.float32)
        return rng.integers(0, N_LEVELS, b), np.full(b, 1.0 / N_LEVELS, np.float32)


# -- the simulator ------------------------------------------------------------------------------------------


class InventorySimulator(DomainSimulator):
    domain = "inventory"
    env_id = "decision_core/Inventory-v0"
    max_steps: ClassVar[int] = HORIZON

    def spec(self, continuous: bool = False) -> DomainSpec:
        return CONTINUOUS_SPEC if continuous else SPEC

    def dynamics(self, **options: object) -> InventoryDynamics:
        unknown = sorted(set(options) - {"continuous"})
        if unknown:
            raise ValueError(f"inventory dynamics: unknown options {unknown}; the only option is 'continuous'")
        continuous = options.get("continuous", False)
        if not isinstance(continuous, bool):
            raise ValueError(f"inventory dynamics: 'continuous' must be true or false, got {continuous!r}")
        return InventoryDynamics(continuous=continuous)

    def policies(self) -> dict[str, SimPolicy]:
        return {"behaviour": BehaviourPolicy(), "oracle": OraclePolicy(), "random": RandomPolicy()}

    def goal_set(self) -> Sequence[Goal]:
        return GOALS

    def write_logs(self, episodes: EpisodeBatch, out_dir: Path, *, seed: int, start_episode: int = 0) -> list[Path]:
        """One CSV of per-SKU daily records (see docs/domains/inventory.md for every column)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = raw_frame(episodes, seed=seed, start_episode=start_episode)
        path = out_dir / f"inventory_{seed}_{start_episode:08d}.csv"
        frame.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%S", float_precision=None)
        return [path]


def raw_frame(episodes: EpisodeBatch, *, seed: int, start_episode: int = 0) -> pl.DataFrame:
    """The raw per-SKU daily records of ``episodes`` as a polars frame (what :meth:`write_logs` writes)."""
    b = len(episodes.lengths)
    lengths = episodes.lengths.astype(np.int64)
    ep = np.repeat(np.arange(b), lengths)
    t = np.arange(len(ep)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    obs = episodes.observations[ep, t]  # float32: written in its shortest form
    ex = episodes.extras
    nxt = t + 1  # extras index of the day's own flows and of tomorrow's receipt
    start_day = ex["start_day"][ep, 0].astype(np.int64)
    rng = np.random.default_rng([seed, start_episode])
    minutes = rng.integers(0, 90, len(t))  # the order run happens between 06:00 and 07:30
    day = start_day + t
    dates = np.datetime64(EPOCH, "D") + day
    decided = dates.astype("datetime64[m]") + np.timedelta64(6 * 60, "m") + minutes.astype("timedelta64[m]")
    last = t == lengths[ep] - 1
    ended = episodes.terminated[ep] & last
    acts = episodes.actions[ep, t]
    qty = acts.reshape(len(t), -1)[:, 0].astype(np.float64)
    if np.issubdtype(episodes.actions.dtype, np.integer):
        qty = qty * LOT
    receipts_today = np.where(t > 0, ex["receipts"][ep, t], 0.0)
    refused_today = np.where(t > 0, ex["refused"][ep, t], 0.0)
    return pl.DataFrame(
        {
            "sku": pl.Series([f"S{seed}-{start_episode + i:07d}" for i in range(b)], dtype=pl.String).gather(ep),
            "period": t.astype(np.int32),
            "date": dates.astype("datetime64[D]"),
            "decided_at": decided.astype("datetime64[us]"),
            "lead_time_days": obs[:, COLUMN["lead_time"]].astype(np.int32),
            "capacity": obs[:, COLUMN["capacity"]],
            "base_forecast": obs[:, COLUMN["base_forecast"]],
            "on_hand": obs[:, COLUMN["on_hand"]],
            "on_order": obs[:, COLUMN["inventory_position"]] - obs[:, COLUMN["on_hand"]],
            "receipts": receipts_today,
            "refused": refused_today,
            "order_qty": qty,
            "demand": ex["demand"][ep, nxt],
            "sales": ex["sales"][ep, nxt],
            "lost_sales": ex["lost_sales"][ep, nxt],
            "closing_stock": ex["closing_stock"][ep, nxt],
            **{cost: ex[cost][ep, nxt] for cost in COST_COLUMNS},
            "propensity": episodes.propensities[ep, t],
            "run_closed": ended,
        }
    )
