"""The built-in Recommender domain: a shop's "recommended for you" widget, simulated.

An episode is one session of one user. At every step the system shows one item of a fixed catalogue of
:data:`N_ITEMS` items in :data:`CATEGORIES`; the user clicks it or not, reads the product page for a while
(dwell), may buy it, and may leave. Hidden from the system are the user's interests over categories (they drift
and grow with what is clicked), fatigue (it grows with every impression, faster when a category repeats) and
satisfaction (good items raise it, click-bait and misses lower it). Leaving becomes likelier as fatigue grows and
satisfaction falls, so the session-long engagement the reward task pays for is not what wins the next click:
eye-catching popular items get clicks but short dwell, and they wear the user out.

The state the system sees (the spec's state vector) is computed from the interaction log alone, so the
adapter (``adapters/recommender.py``) derives exactly the same vectors from the raw impression log that
:meth:`RecommenderSimulator.write_logs` writes. The catalogue is a fixed table generated from
:data:`CATALOGUE_SEED` (see :func:`catalogue`); item ids are catalogue indices. See docs/domains/recommender.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from decision_core.envs.base import BatchDynamics, DomainSimulator, EpisodeBatch, Goal, SimPolicy
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature

CATEGORIES: tuple[str, ...] = ("books", "electronics", "fashion", "home", "sports", "beauty", "toys", "grocery")
N_ITEMS = 240
CATALOGUE_SEED = 20_240_601
#: Impressions the rolling features look back over.
WINDOW = 5
#: Clicks in a category that count as "engaged" (the engagement features are capped there).
ENGAGED_CLICKS = 3
#: Cap of the "impressions since the last click" feature.
SINCE_CLICK_CAP = 10
#: Dwell that counts as full engagement with an item; engagement = click * min(dwell / this, 1).
FULL_DWELL_SECONDS = 60.0
#: Engagement assumed for the impressions before the session started (the satisfaction window's padding).
PRIOR_ENGAGEMENT = 0.5
#: Where the simulated sessions' clock starts (sessions spread over the following 28 days).
LOG_EPOCH = datetime(2026, 3, 1)
#: How much each category draws clicks in the shop (log scale): grocery and books are niches, fashion a hit.
_CATEGORY_POPULARITY = np.array([-0.6, 0.6, 0.7, 0.1, 0.0, 0.3, -0.3, -0.5])


@dataclass(frozen=True)
class UserModel:
    """The hidden user model's coefficients (shared by the dynamics and the oracle's look-ahead)."""

    # click logit = bias + interest * c + appeal * c + (satisfaction - 0.5) * c - fatigue * c - same-category * c
    click_bias: float = -2.2
    click_interest: float = 0.7
    click_appeal: float = 1.4
    click_satisfaction: float = 1.5
    click_fatigue: float = 1.0
    click_same_category: float = 0.1  # per recent impression of the item's category
    #: Click-rate factor by what the user has seen: item never shown / shown / already clicked.
    repeat_factor: tuple[float, float, float] = (1.0, 0.45, 0.15)
    # dwell (s) = (base + scale * quality ** 1.5 * sigmoid(1.5 * interest)) * log-normal(0, noise), shorter on mobile
    dwell_base: float = 15.0
    dwell_scale: float = 70.0
    dwell_noise: float = 0.3
    dwell_mobile: float = 0.75
    # purchase logit after a click
    buy_bias: float = -3.8
    buy_quality: float = 2.5
    buy_satisfaction: float = 2.0
    buy_interest: float = 0.4
    buy_log_price: float = -0.5
    # satisfaction: a click moves it by rate * (engagement - neutral); a miss costs `sat_miss`; a purchase adds
    sat_rate: float = 0.3
    sat_neutral: float = 0.35
    sat_miss: float = 0.02
    sat_buy: float = 0.05
    # fatigue' = decay * fatigue + per_impression + same_category * recent impressions of the category
    fatigue_decay: float = 0.9
    fatigue_per_impression: float = 0.04
    fatigue_same_category: float = 0.01
    # probability of leaving = patience + unhappy * max(level - satisfaction, 0) + tired * fatigue^2 + miss
    leave_level: float = 0.55
    leave_unhappy: float = 0.25
    leave_tired: float = 0.08
    leave_miss: float = 0.02


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Catalogue:
    """The item table. ``category``, ``price`` and ``popularity`` are what a shop knows; ``quality``,
    ``appeal`` (how eye-catching the item is) and ``buy_affinity`` are hidden simulator parameters."""

    category: np.ndarray  # (N,) int64 index into CATEGORIES
    price: np.ndarray  # (N,) float64
    popularity: np.ndarray  # (N,) share of historical clicks, sums to 1
    quality: np.ndarray  # (N,) in (0, 1)
    appeal: np.ndarray  # (N,)
    buy_affinity: np.ndarray  # (N,)

    def frame(self) -> pl.DataFrame:
        """The public part of the catalogue as a table (item_id, category, price, popularity)."""
        return pl.DataFrame(
            {
                "item_id": np.arange(N_ITEMS),
                "category": [CATEGORIES[c] for c in self.category],
                "price": self.price,
                "popularity": self.popularity,
            }
        )


@functools.cache
def catalogue() -> Catalogue:
    """The fixed catalogue (generated from :data:`CATALOGUE_SEED`; identical on every machine)."""
    rng = np.random.default_rng(CATALOGUE_SEED)
    category = rng.permutation(np.arange(N_ITEMS) % len(CATEGORIES))
    appeal = rng.normal(0.0, 1.0, N_ITEMS)
    # Eye-catching items are somewhat worse on average (click-bait), which is what fools popularity.
    quality = _sigmoid(rng.normal(0.2, 1.0, N_ITEMS) - 0.3 * appeal)
    log_pop = _CATEGORY_POPULARITY[category] + 1.2 * appeal + 0.4 * quality + rng.normal(0, 0.3, N_ITEMS)
    popularity = np.exp(log_pop - log_pop.max())
    price = np.round(np.exp(rng.normal(3.3, 0.8, N_ITEMS)), 2)
    buy_affinity = rng.normal(0.0, 0.7, N_ITEMS)
    return Catalogue(category, price, popularity / popularity.sum(), quality, appeal, buy_affinity)


# -- the spec -----------------------------------------------------------------------------------------------

_HEAD = (
    Feature("mobile", "bool", description="the session is on a mobile device"),
    Feature("impressions", "int", description="items shown so far in the session"),
    Feature("clicks", "int", description="clicks so far in the session"),
    Feature("recent_clicks", "int", description=f"clicks over the last {WINDOW} impressions"),
    Feature(
        "since_click",
        "int",
        description=f"impressions since the last click (or session start), capped at {SINCE_CLICK_CAP}",
    ),
    Feature("dwell_minutes", "float", "min", "time spent on recommended items so far"),
    Feature(
        "satisfaction",
        "float",
        description=f"mean engagement over the last {WINDOW} impressions (click * min(dwell / "
        f"{FULL_DWELL_SECONDS:g}s, 1); impressions before the session count {PRIOR_ENGAGEMENT})",
    ),
    Feature("converted", "bool", description="a recommended item was bought in this session"),
)
STATE_FEATURES: tuple[Feature, ...] = (
    *_HEAD,
    *(
        Feature(f"engaged_{c}", "int", description=f"clicks on {c} items, capped at {ENGAGED_CLICKS}")
        for c in CATEGORIES
    ),
    *(Feature(f"recent_{c}", "int", description=f"{c} items among the last {WINDOW} impressions") for c in CATEGORIES),
)
I_MOBILE, I_IMPRESSIONS, I_CLICKS, I_RECENT_CLICKS, I_SINCE, I_DWELL, I_SATISFACTION, I_CONVERTED = range(8)
I_ENGAGED = len(_HEAD)
I_RECENT = I_ENGAGED + len(CATEGORIES)

GOALS: tuple[Goal, ...] = (
    Goal("converted", {"converted": 1.0}, hard=True, description="the user buys a recommended item"),
    Goal("engaged_grocery", {"engaged_grocery": 3.0}, hard=True, description="3 clicks on grocery (a niche category)"),
    Goal(
        "engaged_electronics", {"engaged_electronics": 3.0}, description="3 clicks on electronics (a popular category)"
    ),
    Goal("satisfied", {"satisfaction": 0.7}, hard=True, description="sustained long reads: satisfaction 0.6-0.8"),
    Goal(
        "converted_satisfied",
        {"converted": 1.0, "satisfaction": 0.7},
        hard=True,
        description="bought something and satisfied at the same time",
    ),
)

#: Reward task: long-term engagement, one point per click plus one per minute of dwell, over the session.
REWARD = "next.clicks - clicks + next.dwell_minutes - dwell_minutes"


@functools.cache
def recommender_spec() -> DomainSpec:
    """The Recommender domain spec (shared by the simulator and the adapter)."""
    return DomainSpec(
        name="recommender",
        version="2",
        state=STATE_FEATURES,
        outcomes=(
            OutcomeFeature("converted", 0.5, "bought a recommended item in the session"),
            OutcomeFeature("satisfaction", 0.1, "recent engagement level"),
            *(OutcomeFeature(f"engaged_{c}", 0.5, f"clicks on {c} items (capped at 3)") for c in CATEGORIES),
        ),
        # The widget never shows an item twice in a session: a rule of the domain, derived from the log.
        actions=DiscreteActions(labels=tuple(f"item_{i:03d}" for i in range(N_ITEMS)), once_per_episode=True),
        reward=REWARD,
        description="One user session of a shop's recommendation widget; the action is the item to show.",
        goals={g.name: dict(g.targets) for g in GOALS},
        ope_estimator="mb",  # docs/ope.md and docs/serving.md measure it against the simulator
    )


# -- dynamics -----------------------------------------------------------------------------------------------


class RecommenderDynamics(BatchDynamics):
    """``B`` user sessions. Hidden: interests, fatigue, satisfaction, patience; observed: the interaction log."""

    def __init__(self, model: UserModel | None = None) -> None:
        self.model = model or UserModel()
        self.cat = catalogue()
        self._alloc(0)

    def _alloc(self, b: int) -> None:
        c = len(CATEGORIES)
        # hidden user state
        self.interest = np.zeros((b, c))
        self.mobile = np.zeros(b, np.bool_)
        self.patience = np.zeros(b)  # base probability of leaving after an impression
        self.sat = np.zeros(b)
        self.fatigue = np.zeros(b)
        self.seen = np.zeros((b, N_ITEMS), np.int8)  # 0 never shown, 1 shown, 2 clicked
        # the observable log, as the features need it
        self.impressions = np.zeros(b, np.int64)
        self.clicks = np.zeros(b, np.int64)
        self.since_click = np.zeros(b, np.int64)
        self.dwell_minutes = np.zeros(b)
        self.purchases = np.zeros(b, np.int64)
        self.engaged = np.zeros((b, c), np.int64)
        self.recent_item = np.full((b, WINDOW), -1, np.int64)
        self.recent_cat = np.full((b, WINDOW), -1, np.int64)
        self.recent_click = np.zeros((b, WINDOW), np.int64)
        self.recent_engagement = np.full((b, WINDOW), PRIOR_ENGAGEMENT)
        self.last_click_cat = np.full(b, -1, np.int64)
        self.last: dict[str, np.ndarray] = {
            "click": np.zeros(b, np.int8),
            "purchase": np.zeros(b, np.int8),
            "dwell_seconds": np.zeros(b),
        }

    def _new_users(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        n, c = len(rows), len(CATEGORIES)
        interest = rng.normal(0.0, 0.8, (n, c))
        interest[np.arange(n), rng.integers(0, c, n)] += 1.5  # every user has a favourite category
        mobile = rng.random(n) < 0.6
        self.interest[rows] = interest
        self.mobile[rows] = mobile
        self.patience[rows] = rng.uniform(0.005, 0.025, n) + 0.01 * mobile
        self.sat[rows] = rng.uniform(0.35, 0.65, n)
        self.fatigue[rows] = 0.0
        self.seen[rows] = 0
        for arr in (self.impressions, self.clicks, self.since_click, self.dwell_minutes, self.purchases):
            arr[rows] = 0
        self.engaged[rows] = 0
        self.recent_item[rows] = -1
        self.recent_cat[rows] = -1
        self.recent_click[rows] = 0
        self.recent_engagement[rows] = PRIOR_ENGAGEMENT
        self.last_click_cat[rows] = -1
        for arr in self.last.values():
            arr[rows] = 0

    def reset(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        self._alloc(batch)
        self._new_users(np.arange(batch), rng)
        return self.observe()

    def reset_worlds(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Start new sessions in the worlds where ``mask`` is True (per-world autoreset)."""
        self._new_users(np.flatnonzero(np.asarray(mask, np.bool_)), rng)
        return self.observe()

    def action_mask(self) -> np.ndarray:
        """(B, N) items not shown yet in each session (the domain's once-per-session rule, from the log)."""
        return self.seen == 0

    def observe(self) -> np.ndarray:
        """(B, S) float32 state vectors, computed from the observable log only."""
        b = len(self.sat)
        obs = np.empty((b, len(STATE_FEATURES)), np.float64)
        obs[:, I_MOBILE] = self.mobile
        obs[:, I_IMPRESSIONS] = self.impressions
        obs[:, I_CLICKS] = self.clicks
        obs[:, I_RECENT_CLICKS] = self.recent_click.sum(1)
        obs[:, I_SINCE] = self.since_click
        obs[:, I_DWELL] = self.dwell_minutes
        obs[:, I_SATISFACTION] = self.recent_engagement.sum(1) / WINDOW
        obs[:, I_CONVERTED] = self.purchases > 0
        obs[:, I_ENGAGED:I_RECENT] = np.minimum(self.engaged, ENGAGED_CLICKS)
        cats = np.arange(len(CATEGORIES))
        obs[:, I_RECENT:] = (self.recent_cat[:, :, None] == cats).sum(1)
        return obs.astype(np.float32)

    # The user model, evaluated for (B, 1) chosen items, or for every item at once when ``items`` is None (the
    # oracle's look-ahead; plain indexing there is much faster than gathering a broadcast index).
    def _item(self, values: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """A catalogue attribute of ``items``: (B, 1), or (1, N) for every item."""
        return values[None, :] if items is None else values[items]

    def _per_user(self, table: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """A (B, C) per-category table of each user, at the category of ``items``."""
        if items is None:
            return table[:, self.cat.category]
        return np.take_along_axis(table, self.cat.category[items], 1)

    def _interest(self, items: np.ndarray | None) -> np.ndarray:
        return self._per_user(self.interest, items)

    def _recent_same(self, items: np.ndarray | None) -> np.ndarray:
        """How many of the last impressions were in the category of each of ``items``."""
        return self._per_user((self.recent_cat[:, :, None] == np.arange(len(CATEGORIES))).sum(1), items)

    def _click_prob(self, items: np.ndarray | None) -> np.ndarray:
        m = self.model
        z = (
            m.click_bias
            + m.click_interest * self._interest(items)
            + m.click_appeal * self._item(self.cat.appeal, items)
            + m.click_satisfaction * (self.sat[:, None] - 0.5)
            - m.click_fatigue * self.fatigue[:, None]
            - m.click_same_category * self._recent_same(items)
        )
        seen = self.seen if items is None else np.take_along_axis(self.seen, items, 1)
        return _sigmoid(z) * np.asarray(m.repeat_factor)[seen]

    def _dwell_median(self, items: np.ndarray | None) -> np.ndarray:
        """Median dwell in seconds after a click: long for good items in categories the user is into."""
        m = self.model
        quality = self._item(self.cat.quality, items)
        base = m.dwell_base + m.dwell_scale * quality**1.5 * _sigmoid(1.5 * self._interest(items))
        return base * np.where(self.mobile, m.dwell_mobile, 1.0)[:, None]

    def _buy_prob(self, items: np.ndarray | None) -> np.ndarray:
        """Probability of a purchase after a click."""
        m = self.model
        z = (
            m.buy_bias
            + m.buy_quality * self._item(self.cat.quality, items)
            + m.buy_satisfaction * (self.sat[:, None] - 0.5)
            + m.buy_interest * self._interest(items)
            + m.buy_log_price * (np.log(self._item(self.cat.price, items)) - 3.3)
            + self._item(self.cat.buy_affinity, items)
        )
        return _sigmoid(z)

    def _sat_change(self, engagement: np.ndarray, p_click: np.ndarray, p_buy: np.ndarray) -> np.ndarray:
        """Change of satisfaction; with probabilities for ``p_click``/``p_buy`` it is the expected change."""
        m = self.model
        return p_click * m.sat_rate * (engagement - m.sat_neutral) - (1 - p_click) * m.sat_miss + m.sat_buy * p_buy

    def _fatigue_next(self, fatigue: np.ndarray, same: np.ndarray) -> np.ndarray:
        m = self.model
        return m.fatigue_decay * fatigue + m.fatigue_per_impression + m.fatigue_same_category * same

    def _leave_prob(self, sat: np.ndarray, fatigue: np.ndarray, miss: np.ndarray) -> np.ndarray:
        """Probability of leaving after an impression, for (B, K) next satisfaction, fatigue and miss."""
        m = self.model
        unhappy = np.maximum(m.leave_level - sat, 0.0)
        hazard = self.patience[:, None] + m.leave_unhappy * unhappy + m.leave_tired * fatigue**2 + m.leave_miss * miss
        return np.clip(hazard, 0.0, 1.0)

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        items = np.asarray(actions).reshape(-1).astype(np.int64)
        b = len(self.sat)
        if items.shape != (b,) or (items < 0).any() or (items >= N_ITEMS).any():
            raise ValueError(f"actions must be {b} item indices in 0..{N_ITEMS - 1}, got {np.asarray(actions)!r}")
        rows, chosen = np.arange(b), items[:, None]
        # Every random number is drawn whatever happens, so a seeded run does not depend on the outcomes.
        u_click, u_buy, u_leave = rng.random(b), rng.random(b), rng.random(b)
        dwell_noise = rng.normal(0.0, self.model.dwell_noise, b)
        drift = rng.normal(0.0, 0.05, self.interest.shape)
        cat = self.cat.category[items]
        repeats = self._recent_same(chosen)[:, 0]
        click = u_click < self._click_prob(chosen)[:, 0]
        # Dwell is logged to 0.1 s; the features are computed from the logged value so the adapter matches.
        dwell = np.where(click, np.round(self._dwell_median(chosen)[:, 0] * np.exp(dwell_noise), 1), 0.0)
        engagement = np.minimum(dwell / FULL_DWELL_SECONDS, 1.0)
        buy = click & (u_buy < self._buy_prob(chosen)[:, 0])
        # hidden state
        self.sat = np.clip(self.sat + self._sat_change(engagement, click, buy), 0.0, 1.0)
        self.fatigue = self._fatigue_next(self.fatigue, repeats)
        self.interest += drift
        self.interest[rows, cat] += np.where(click, 0.15, -0.03)  # clicks reinforce interest, misses bore
        self.seen[rows, items] = np.where(click, 2, np.maximum(self.seen[rows, items], 1))
        left = u_leave < self._leave_prob(self.sat[:, None], self.fatigue[:, None], ~click[:, None])[:, 0]
        # the observable log
        slot = self.impressions % WINDOW
        self.recent_item[rows, slot] = items
        self.recent_cat[rows, slot] = cat
        self.recent_click[rows, slot] = click
        self.recent_engagement[rows, slot] = engagement
        self.impressions += 1
        self.clicks += click
        self.since_click = np.where(click, 0, np.minimum(self.since_click + 1, SINCE_CLICK_CAP))
        self.dwell_minutes += dwell / 60.0
        self.purchases += buy
        self.engaged[rows, cat] += click
        self.last_click_cat = np.where(click, cat, self.last_click_cat)
        self.last = {"click": click.astype(np.int8), "purchase": buy.astype(np.int8), "dwell_seconds": dwell}
        reward = (click + dwell / 60.0).astype(np.float32)
        return self.observe(), reward, left

    def info(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.last.items()}

    def lookahead(self) -> dict[str, np.ndarray]:
        """Expected consequences of showing each item now, from the hidden state; each (B, N_ITEMS)."""
        items = None  # every item
        p_click = self._click_prob(items)
        dwell = self._dwell_median(items) * np.exp(self.model.dwell_noise**2 / 2)
        engagement = np.minimum(dwell / FULL_DWELL_SECONDS, 1.0)
        p_buy = p_click * self._buy_prob(items)
        sat_next = np.clip(self.sat[:, None] + self._sat_change(engagement, p_click, p_buy), 0.0, 1.0)
        fatigue_next = self._fatigue_next(self.fatigue[:, None], self._recent_same(items))
        return {
            "p_click": p_click,
            "engagement": p_click * engagement,
            "p_buy": p_buy,
            "reward": p_click * (1.0 + dwell / 60.0),
            "leave": self._leave_prob(sat_next, fatigue_next, 1 - p_click),
        }


# -- policies -----------------------------------------------------------------------------------------------


def _sample(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw per row of (B, N) probabilities; returns the items and their probabilities."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    items = np.minimum((cdf < u[:, None]).sum(1), probs.shape[1] - 1)
    return items.astype(np.int64), probs[np.arange(len(items)), items].astype(np.float32)


class BehaviourPolicy(SimPolicy):
    """How such widgets run today: popular items, a boost for the category of the last click ("because you
    viewed ..."), never an item already shown in the session; a softmax over these scores explores."""

    name = "behaviour"
    temperature = 0.5
    recency_boost = 1.0

    def probabilities(self, dynamics: RecommenderDynamics) -> np.ndarray:
        """(B, N) probability of showing each item."""
        b = len(dynamics.sat)
        scores = np.tile(np.log(dynamics.cat.popularity), (b, 1))
        scores += self.recency_boost * (dynamics.cat.category == dynamics.last_click_cat[:, None])
        scores /= self.temperature
        scores[dynamics.seen > 0] = -np.inf  # the domain's rule: the system knows what it has shown
        scores -= scores.max(1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(1, keepdims=True)

    def act(self, dynamics, observations, goals, goal_mask, rng):  # type: ignore[override]
        return _sample(self.probabilities(dynamics), rng)


class OraclePolicy(SimPolicy):
    """Looks one step ahead with the user's hidden state. Without a goal it maximises expected reward now plus
    the value of keeping the user (``keep_value`` per unit of leaving probability); with a goal it shows the
    item that makes the most expected progress on the unmet parts of the goal, still keeping the user."""

    name = "oracle"
    keep_value = 12.0
    goal_keep_value = 3.0

    def lookahead(self, dynamics: RecommenderDynamics) -> dict[str, np.ndarray]:
        """The expected consequences of showing each item now (see :meth:`RecommenderDynamics.lookahead`)."""
        return dynamics.lookahead()

    def act(self, dynamics, observations, goals, goal_mask, rng):  # type: ignore[override]
        ahead = self.lookahead(dynamics)
        score = ahead["reward"] - self.keep_value * ahead["leave"]
        if goals is not None and goal_mask is not None and np.asarray(goal_mask).any():
            progress = self._progress(ahead, observations, np.asarray(goals), np.asarray(goal_mask, np.bool_))
            pursue = progress.max(1) > 0
            goal_score = progress - self.goal_keep_value * ahead["leave"]
            score = np.where(pursue[:, None], goal_score, score)
        items = np.where(dynamics.seen > 0, -np.inf, score).argmax(1)
        return items.astype(np.int64), np.ones(len(items), np.float32)

    @staticmethod
    def _progress(ahead: dict[str, np.ndarray], obs: np.ndarray, goals: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, N) expected progress on the unmet goal features, each term scaled to at most 1 per world."""
        spec = recommender_spec()
        achieved = obs[:, spec.outcome_index]
        unmet = mask & (np.abs(achieved - goals) > spec.tolerances)
        category = catalogue().category
        progress = np.zeros_like(ahead["p_click"])
        for j, name in enumerate(spec.outcome_names):
            if not unmet[:, j].any():
                continue
            up = goals[:, j] > achieved[:, j]
            if name == "converted":
                term = np.where(up[:, None], ahead["p_buy"], 0.0)
            elif name == "satisfaction":
                term = np.where(up[:, None], ahead["engagement"], ahead["p_click"] - ahead["engagement"])
            else:
                in_cat = category == CATEGORIES.index(name.removeprefix("engaged_"))
                term = np.where(up[:, None], ahead["p_click"] * in_cat, 0.0)
            term = term / np.maximum(term.max(1, keepdims=True), 1e-9)
            progress += np.where(unmet[:, j, None], term, 0.0)
        return progress


class SessionOraclePolicy(OraclePolicy):
    """The oracle's look-ahead without the user's hidden state: a reference for what the observable state allows.

    It still knows every item's hidden parameters and the user model's coefficients, but the user's interests
    are the population mean plus what this session's clicks and misses added to them, satisfaction is its
    population mean and patience that of the session's (logged) device. What separates it from
    :class:`OraclePolicy` is what no log shows: which category this user favours.
    """

    name = "session_oracle"

    def lookahead(self, dynamics: RecommenderDynamics) -> dict[str, np.ndarray]:
        hidden = dynamics.interest, dynamics.sat, dynamics.patience
        clicks = dynamics.engaged
        shown = (dynamics.seen > 0).astype(np.int64) @ np.eye(len(CATEGORIES), dtype=np.int64)[dynamics.cat.category]
        # Every user favours one category by +1.5 (see _new_users): 1.5 / C on average; clicks add, misses take.
        estimate = np.full_like(dynamics.interest, 1.5 / len(CATEGORIES))
        estimate += 0.15 * clicks - 0.03 * (shown - clicks)
        dynamics.interest = estimate
        dynamics.sat = np.full_like(dynamics.sat, 0.5)
        patience = np.full_like(dynamics.patience, 0.015)
        patience[dynamics.mobile] += 0.01  # the device is logged
        dynamics.patience = patience
        try:
            return dynamics.lookahead()
        finally:
            dynamics.interest, dynamics.sat, dynamics.patience = hidden


class RandomPolicy(SimPolicy):
    """Any item not shown yet in the session, uniformly."""

    name = "random"

    def act(self, dynamics, observations, goals, goal_mask, rng):  # type: ignore[override]
        available = dynamics.action_mask()
        draws = np.where(available, rng.random(available.shape), -1.0)
        return draws.argmax(1).astype(np.int64), (1.0 / available.sum(1)).astype(np.float32)


# -- the simulator --------------------------------------------------------------------------------------------

#: Raw impression-log columns the writer produces, in order (the adapter reads these; see its ``columns``).
LOG_COLUMNS = (
    "user_id",
    "session_id",
    "session_seq",
    "timestamp",
    "device",
    "item_id",
    "slot",
    "propensity",
    "click",
    "purchase",
    "dwell_seconds",
    "left",
)


class RecommenderSimulator(DomainSimulator):
    """Users browsing a shop's recommendation widget; see the module docstring."""

    domain = "recommender"
    env_id = "decision_core/Recommender-v0"
    max_steps: ClassVar[int] = 50

    def spec(self) -> DomainSpec:
        return recommender_spec()

    def dynamics(self, **options: object) -> RecommenderDynamics:
        if options:
            raise ValueError(f"the recommender simulator has no variants; got options {sorted(options)}")
        return RecommenderDynamics()

    def policies(self) -> dict[str, SimPolicy]:
        return {
            "behaviour": BehaviourPolicy(),
            "oracle": OraclePolicy(),
            "random": RandomPolicy(),
            "session_oracle": SessionOraclePolicy(),
        }

    def goal_set(self) -> Sequence[Goal]:
        return GOALS

    def write_logs(self, episodes: EpisodeBatch, out_dir: Path, *, seed: int, start_episode: int = 0) -> list[Path]:
        """One impression log, ``impressions_<start>.csv``: a row per item shown (see docs/domains/recommender.md).

        User and session ids number the episodes from ``start_episode``; device types and timestamps (think time
        between impressions, plus the dwell on the previous item) are drawn from ``seed``.
        """
        rng = np.random.default_rng(seed)
        lengths = episodes.lengths.astype(np.int64)
        n_ep, total = len(lengths), int(lengths.sum())
        ep = np.repeat(np.arange(n_ep), lengths)
        starts = np.cumsum(lengths) - lengths
        t = np.arange(total) - starts[ep]
        mobile = episodes.observations[:, 0, I_MOBILE] > 0.5
        device = np.where(mobile, "mobile", np.where(rng.random(n_ep) < 0.8, "desktop", "tablet"))
        dwell = episodes.extras["dwell_seconds"][ep, t + 1]
        session_start = rng.uniform(0, 28 * 86_400, n_ep)
        think = rng.lognormal(np.log(6.0), 0.6, total)
        # Time between impressions: the previous dwell plus think time; the first impression opens the session.
        gap = np.where(t == 0, 0.0, think + np.concatenate([[0.0], dwell[:-1]]))
        offset = np.cumsum(gap) - np.repeat(np.cumsum(gap)[starts] - gap[starts], lengths)
        micros = np.round((session_start[ep] + offset) * 1000).astype(np.int64) * 1000
        ids = start_episode + np.arange(n_ep)
        frame = pl.DataFrame(
            {
                "user_id": np.array([f"u{i:07d}" for i in ids])[ep],
                "session_id": np.array([f"s{i:07d}" for i in ids])[ep],
                "session_seq": t,
                "timestamp": pl.Series(np.datetime64(LOG_EPOCH, "us") + micros.astype("timedelta64[us]")),
                "device": device[ep],
                "item_id": episodes.actions[ep, t],
                "slot": np.zeros(total, np.int64),
                "propensity": episodes.propensities[ep, t].astype(np.float64),
                "click": episodes.extras["click"][ep, t + 1].astype(np.int64),
                "purchase": episodes.extras["purchase"][ep, t + 1].astype(np.int64),
                "dwell_seconds": dwell,
                "left": (t == lengths[ep] - 1) & episodes.terminated[ep],
            }
        ).select(LOG_COLUMNS)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"impressions_{start_episode:07d}.csv"
        frame.write_csv(path)
        return [path]
