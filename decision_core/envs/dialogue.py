"""Dialogue: task-oriented restaurant-booking dialogues with an agenda-based user simulator.

Each world is one dialogue. The user holds a hidden goal (a value for each of five slots: area, cuisine, price,
party size, time), an agenda (the order in which they volunteer slots), a patience budget and a speech
recognition quality. They are heard through noisy understanding (NLU): each informed value is recognised
correctly with a per-dialogue probability, and comes with a confidence that is higher, on average, when it is
right. Users sometimes change their mind about a slot they already gave and say so.

One step is one system turn followed by the user's answer. The system's act is one of ``request(slot)``,
``confirm(slot)``, ``offer`` (a venue matching the current belief), ``book`` (the offered venue) and ``bye``.
Availability is masked: a slot can be confirmed once it has a value, an offer needs every slot filled, and
booking needs an offer on the table. A dialogue ends when the system books or says bye, or when the user loses
patience and hangs up (every turn costs patience, every ``no`` the user has to say costs more).

The observation is the **belief state** a rule-based dialogue-state tracker derives from what the system heard:
per slot the confidence of the current value (0 = unknown) and whether the user confirmed it, counts of filled
and confirmed slots, the offer status, counts of offers and user negations, booked, task success, and the turn.
``adapters/dialogue.py`` derives exactly the same vector from the raw turn-level logs :meth:`write_logs` writes.
Belief update, applied to the user's NLU rows in order: ``inform(s)`` sets slot s's confidence and clears its
confirmation and any pending offer; ``affirm(s)`` confirms s; ``negate(s)`` clears s; ``affirm`` (no slot)
accepts the pending offer; ``negate`` (any) withdraws the pending offer; ``thankyou`` marks task success. The
system's ``offer`` puts an offer on the table and ``book`` books it.

Reward task: ``+20`` when a correct booking is made (task success), ``-1`` per system turn.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from decision_core.envs.base import BatchDynamics, DomainSimulator, EpisodeBatch, Goal, SimPolicy
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature

SLOTS: tuple[str, ...] = ("area", "cuisine", "price", "people", "time")
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "area": ("centre", "north", "south", "east", "west"),
    "cuisine": ("italian", "chinese", "indian", "british", "french", "thai", "mexican", "japanese"),
    "price": ("cheap", "moderate", "expensive"),
    "people": ("1", "2", "3", "4", "5", "6", "7", "8"),
    "time": ("17:00", "17:30", "18:00", "18:30", "19:00", "19:30", "20:00", "20:30"),
}
N_SLOTS = len(SLOTS)
N_VALUES = np.array([len(SLOT_VALUES[s]) for s in SLOTS], np.int64)

#: System acts, in action-index order: request per slot, confirm per slot, offer, book, bye.
ACTION_LABELS: tuple[str, ...] = (
    *(f"request({s})" for s in SLOTS),
    *(f"confirm({s})" for s in SLOTS),
    "offer",
    "book",
    "bye",
)
N_ACTIONS = len(ACTION_LABELS)
REQUEST, CONFIRM, OFFER, BOOK, BYE = 0, N_SLOTS, 2 * N_SLOTS, 2 * N_SLOTS + 1, 2 * N_SLOTS + 2
#: Act name and slot index (-1 = none) of every action.
ACTION_ACT = np.array([lab.split("(")[0] for lab in ACTION_LABELS])
ACTION_SLOT = np.array([*range(N_SLOTS), *range(N_SLOTS), -1, -1, -1], np.int64)

#: User acts as the NLU reports them; codes are indices (``-1`` = no row).
USER_ACTS: tuple[str, ...] = ("inform", "affirm", "negate", "ack", "thankyou", "bye")
INFORM, AFFIRM, NEGATE, ACK, THANKYOU, USER_BYE = range(len(USER_ACTS))
#: NLU rows per user turn (reply, a second act, a change of mind).
ROWS = 3

SUCCESS_REWARD = 20.0
TURN_COST = 1.0

# State vector layout (indices into the observation).
CONF, CONFIRMED = slice(0, N_SLOTS), slice(N_SLOTS, 2 * N_SLOTS)
(FILLED, N_CONFIRMED, OFFER_PENDING, OFFER_ACCEPTED, OFFERS, NEGATIONS, BOOKED, SUCCESS, TURN) = range(
    2 * N_SLOTS, 2 * N_SLOTS + 9
)

STATE_FEATURES: tuple[Feature, ...] = (
    *(Feature(f"{s}_conf", "float", "", f"NLU confidence of the believed {s} (0 = not filled)") for s in SLOTS),
    *(Feature(f"{s}_confirmed", "bool", "", f"the user affirmed the believed {s}") for s in SLOTS),
    Feature("slots_filled", "int", "slots", "slots with a believed value"),
    Feature("slots_confirmed", "int", "slots", "slots the user affirmed"),
    Feature("offer_pending", "bool", "", "an offer is on the table (made, not withdrawn or superseded)"),
    Feature("offer_accepted", "bool", "", "the user explicitly accepted the pending offer"),
    Feature("offers_made", "int", "offers", "offers made so far"),
    Feature("negations", "int", "acts", "times the user said no"),
    Feature("booked", "bool", "", "the system booked a venue"),
    Feature("task_success", "bool", "", "the user thanked for a booking that matches their goal"),
    Feature("turn", "int", "turns", "system turns so far"),
)

OUTCOMES: tuple[OutcomeFeature, ...] = (
    OutcomeFeature("slots_filled", 0.5, "number of slots with a believed value"),
    OutcomeFeature("slots_confirmed", 0.5, "number of slots the user confirmed"),
    OutcomeFeature("booked", 0.5, "a booking was made"),
    OutcomeFeature("task_success", 0.5, "the booking matches the user's goal"),
)

GOALS: tuple[Goal, ...] = (
    Goal("slots_filled", {"slots_filled": 5}, description="every required slot has a value"),
    Goal("booking_made", {"booked": 1}, description="a venue was booked"),
    Goal("all_confirmed", {"slots_confirmed": 5}, hard=True, description="every required slot confirmed"),
    Goal("task_success", {"task_success": 1}, description="a booking that matches the user's goal"),
    Goal(
        "confirmed_booking",
        {"slots_confirmed": 5, "task_success": 1},
        hard=True,
        description="every slot confirmed, then a correct booking",
    ),
)

SPEC = DomainSpec(
    name="dialogue",
    version="1",
    state=STATE_FEATURES,
    outcomes=OUTCOMES,
    actions=DiscreteActions(labels=ACTION_LABELS, masked=True),
    reward=f"{SUCCESS_REWARD:g} * (next.task_success - task_success) - {TURN_COST:g}",
    description="Task-oriented restaurant booking dialogues; state = belief state, action = system dialogue act.",
    goals={g.name: dict(g.targets) for g in GOALS},
    ope_estimator="pdwis",  # docs/ope.md and docs/serving.md measure it against the simulator
)


@dataclass(frozen=True)
class DialogueParams:
    """The user population and NLU; the defaults are the built-in task."""

    #: Per-dialogue probability that NLU hears a value right, drawn uniformly from this range.
    nlu_accuracy: tuple[float, float] = (0.6, 0.95)
    #: Per-slot exponent on that probability (free-text cuisine and times are harder to recognise).
    slot_difficulty: tuple[float, ...] = (1.0, 1.3, 0.7, 1.0, 1.4)
    #: Confidence = sigmoid(mean + sd * noise), mean depending on whether the value was heard right.
    confidence_right: float = 2.0
    confidence_wrong: float = -1.5
    confidence_sd: float = 1.0
    #: Probabilities of how many slots the user gives in the opening utterance (1, 2, 3).
    opening_slots: tuple[float, float, float] = (0.45, 0.4, 0.15)
    #: Chance the user also volunteers the next slot of their agenda when asked for one.
    over_inform: float = 0.3
    #: Chance the user restates the right value after saying no to a confirmation.
    correct_after_negate: float = 0.6
    #: Chance the user says no to a wrong offer (else a noncommittal "ok" leaves it on the table).
    negate_wrong_offer: float = 0.75
    #: Chance the user says which slot was wrong after saying no to an offer.
    explain_wrong_offer: float = 0.4
    #: Chance per turn the user changes their mind about one slot.
    change_mind: float = 0.03
    #: Patience in turns, drawn uniformly from this inclusive range; each "no" costs ``annoyance`` more.
    patience: tuple[int, int] = (12, 20)
    annoyance: float = 1.0

    def __post_init__(self) -> None:
        chances = ("over_inform", "correct_after_negate", "negate_wrong_offer", "explain_wrong_offer", "change_mind")
        for name in chances:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DialogueParams.{name} is a probability in [0, 1], got {getattr(self, name)}")
        lo, hi = self.nlu_accuracy
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"DialogueParams.nlu_accuracy must be a range within [0, 1], got {self.nlu_accuracy}")
        if len(self.slot_difficulty) != N_SLOTS or min(self.slot_difficulty) <= 0:
            raise ValueError(f"DialogueParams.slot_difficulty needs {N_SLOTS} positive exponents, one per slot")
        if min(self.opening_slots) < 0 or abs(sum(self.opening_slots) - 1) > 1e-9:
            raise ValueError(
                f"DialogueParams.opening_slots must be probabilities summing to 1, got {self.opening_slots}"
            )
        if not 1 <= self.patience[0] <= self.patience[1]:
            raise ValueError(f"DialogueParams.patience must be a range of turns >= 1, got {self.patience}")
        if self.annoyance < 0:
            raise ValueError(f"DialogueParams.annoyance must be >= 0, got {self.annoyance}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _first_true(flags: np.ndarray) -> np.ndarray:
    """(B,) index of the first True of each row (0 when none)."""
    return np.argmax(flags, axis=1)


def action_mask(obs: np.ndarray) -> np.ndarray:
    """(B, K) available system acts in belief states ``obs``: confirm needs a value, offer needs every slot
    filled, book needs an offer on the table; request and bye are always available."""
    mask = np.ones((obs.shape[0], N_ACTIONS), np.bool_)
    mask[:, CONFIRM : CONFIRM + N_SLOTS] = obs[:, CONF] > 0
    mask[:, OFFER] = obs[:, FILLED] >= N_SLOTS
    mask[:, BOOK] = obs[:, OFFER_PENDING] > 0.5
    return mask


#: Per-world fields a new dialogue starts from (besides the user's hidden goal, agenda, NLU accuracy, patience).
_INITIAL_BELIEF = {
    "value": -1,
    "conf": 0,
    "confirmed": False,
    "told": False,
    "pending": False,
    "accepted": False,
    "offers": 0,
    "negations": 0,
    "booked": False,
    "success": False,
    "turn": 0,
    "done": False,
}


class DialogueDynamics(BatchDynamics):
    """``B`` dialogues stepped together; hidden user state and the tracked belief live here."""

    def __init__(self, params: DialogueParams | None = None) -> None:
        self.params = params or DialogueParams()
        self._alloc(0)

    def _alloc(self, b: int) -> None:
        self.goal = np.zeros((b, N_SLOTS), np.int64)  # hidden: the user's wanted value per slot
        self.rank = np.zeros((b, N_SLOTS), np.int64)  # hidden: position of each slot in the user's agenda
        self.told = np.zeros((b, N_SLOTS), np.bool_)  # hidden: slots the user has mentioned
        self.accuracy = np.zeros(b)  # hidden: NLU accuracy of this dialogue
        self.patience = np.zeros(b)  # hidden: turns left before the user hangs up
        self.value = np.full((b, N_SLOTS), -1, np.int64)  # believed value per slot (-1 = none)
        self.conf = np.zeros((b, N_SLOTS), np.float32)
        self.confirmed = np.zeros((b, N_SLOTS), np.bool_)
        self.pending = np.zeros(b, np.bool_)
        self.accepted = np.zeros(b, np.bool_)
        self.offers = np.zeros(b, np.int64)
        self.negations = np.zeros(b, np.int64)
        self.booked = np.zeros(b, np.bool_)
        self.success = np.zeros(b, np.bool_)
        self.turn = np.zeros(b, np.int64)
        self.done = np.zeros(b, np.bool_)
        # The last user turn as NLU heard it (for the raw logs): act, slot, value, confidence per row.
        self.u_act = np.full((b, ROWS), -1, np.int64)
        self.u_slot = np.full((b, ROWS), -1, np.int64)
        self.u_value = np.full((b, ROWS), -1, np.int64)
        self.u_conf = np.zeros((b, ROWS), np.float32)

    # -- BatchDynamics ---------------------------------------------------------------------------------------
    def reset(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        self._alloc(batch)
        return self.reset_worlds(np.ones(batch, np.bool_), rng)

    def reset_worlds(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Start new dialogues in the worlds where ``mask`` is True; the user opens by giving 1-3 slots."""
        p, b = self.params, self.goal.shape[0]
        idx = np.flatnonzero(mask)
        n = idx.size
        self.goal[idx] = rng.integers(0, N_VALUES, size=(n, N_SLOTS))
        agenda = np.argsort(rng.random((n, N_SLOTS)), axis=1)  # slots in the order the user gives them
        self.rank[idx] = np.argsort(agenda, axis=1)
        self.accuracy[idx] = rng.uniform(*p.nlu_accuracy, size=n)
        self.patience[idx] = rng.integers(p.patience[0], p.patience[1] + 1, size=n)
        for name, fill in _INITIAL_BELIEF.items():
            getattr(self, name)[idx] = fill
        k = rng.choice(np.arange(1, ROWS + 1), size=n, p=list(p.opening_slots))
        act, slot, val = (np.full((b, ROWS), -1, np.int64) for _ in range(3))
        says = np.arange(ROWS)[None, :] < k[:, None]
        act[idx] = np.where(says, INFORM, -1)
        slot[idx] = np.where(says, agenda[:, :ROWS], -1)
        self.told[idx] = self.rank[idx] < k[:, None]
        val = np.where(slot >= 0, np.take_along_axis(self.goal, np.maximum(slot, 0), axis=1), -1)
        self._hear_and_apply(act, slot, val, mask, rng)
        return self.observe()

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.params
        a = np.asarray(actions, np.int64).reshape(-1)
        b = a.shape[0]
        if a.shape[0] != self.goal.shape[0] or ((a < 0) | (a >= N_ACTIONS)).any():
            raise ValueError(f"dialogue step needs {self.goal.shape[0]} action indices in 0..{N_ACTIONS - 1}")
        rows = np.arange(b)
        # An unavailable act (e.g. book with no offer made) is a wasted turn: the user only says "hm?".
        valid = self.action_mask()[rows, a]
        live = ~self.done
        acting = live & valid
        kind = np.where(a < CONFIRM, REQUEST, np.where(a < OFFER, CONFIRM, a))
        s = np.maximum(ACTION_SLOT[a], 0)
        # The system's own act changes the belief before the user answers.
        offer, book, bye = acting & (kind == OFFER), acting & (kind == BOOK), acting & (kind == BYE)
        self.pending |= offer
        self.accepted &= ~offer
        self.offers += offer
        self.booked |= book
        self.turn += live
        self.patience -= live

        act, slot, val = (np.full((b, ROWS), -1, np.int64) for _ in range(3))
        goal_s = self.goal[rows, s]
        matches = np.all(self.value == self.goal, axis=1)
        # request(s): the user gives s, and sometimes the next slot of their agenda too.
        req = acting & (kind == REQUEST)
        self._put(act, slot, val, req, 0, INFORM, s, goal_s)
        self.told[rows[req], s[req]] = True
        untold = ~self.told
        nxt = np.argmin(np.where(untold, self.rank, N_SLOTS), axis=1)  # next slot on the agenda
        over = req & untold.any(axis=1) & (rng.random(b) < p.over_inform)
        self._put(act, slot, val, over, 1, INFORM, nxt, self.goal[rows, nxt])
        self.told[rows[over], nxt[over]] = True
        # confirm(s): yes if the believed value is right, else no (and often the right value).
        con = acting & (kind == CONFIRM)
        right = self.value[rows, s] == goal_s
        self._put(act, slot, val, con & right, 0, AFFIRM, s, self.value[rows, s])
        self._put(act, slot, val, con & ~right, 0, NEGATE, s, self.value[rows, s])
        restate = con & ~right & (rng.random(b) < p.correct_after_negate)
        self._put(act, slot, val, restate, 1, INFORM, s, goal_s)
        # offer: yes if the venue fits the goal; else usually no (sometimes saying what is wrong), or "ok".
        wrong_slot = np.argmax((self.value != self.goal) * rng.random((b, N_SLOTS)), axis=1)
        none = np.full(b, -1)
        self._put(act, slot, val, offer & matches, 0, AFFIRM, none, none)
        negate = offer & ~matches & (rng.random(b) < p.negate_wrong_offer)
        self._put(act, slot, val, negate, 0, NEGATE, none, none)
        self._put(act, slot, val, offer & ~matches & ~negate, 0, ACK, none, none)
        explain = negate & (rng.random(b) < p.explain_wrong_offer)
        self._put(act, slot, val, explain, 1, INFORM, wrong_slot, self.goal[rows, wrong_slot])
        # book: thanks for a right booking, a complaint for a wrong one; either way the user leaves.
        self._put(act, slot, val, book & matches, 0, THANKYOU, none, none)
        self._put(act, slot, val, book & ~matches, 0, NEGATE, none, none)
        self._put(act, slot, val, book | bye, 1 - bye.astype(np.int64), USER_BYE, none, none)
        # Changes of mind: the user says so if they had already given that slot.
        change = acting & ~book & ~bye & (rng.random(b) < p.change_mind)
        c = rng.integers(0, N_SLOTS, size=b)
        new = (self.goal[rows, c] + rng.integers(1, N_VALUES[c])) % N_VALUES[c]
        self.goal[rows[change], c[change]] = new[change]
        self._put(act, slot, val, change & self.told[rows, c], 2, INFORM, c, new)
        self._put(act, slot, val, live & ~valid, 0, ACK, none, none)
        # Every "no" costs patience; out of patience, the user hangs up instead of answering.
        self.patience -= p.annoyance * (act == NEGATE).sum(axis=1)
        hang = live & ~book & ~bye & (self.patience <= 0)
        act[hang], slot[hang], val[hang] = -1, -1, -1
        act[hang, 0] = USER_BYE

        had_success = self.success.copy()
        self.u_act[~live], self.u_slot[~live], self.u_value[~live], self.u_conf[~live] = -1, -1, -1, 0
        self._hear_and_apply(act, slot, val, live, rng)
        self.done |= live & np.any(act == USER_BYE, axis=1)
        reward = np.where(live, SUCCESS_REWARD * (self.success & ~had_success) - TURN_COST, 0.0)
        return self.observe(), reward.astype(np.float32), self.done.copy()

    def info(self) -> dict[str, np.ndarray]:
        """The last user turn as NLU heard it, the believed slot values and the action mask (for raw logs)."""
        return {
            "user_act": self.u_act.astype(np.int8),
            "user_slot": self.u_slot.astype(np.int8),
            "user_value": self.u_value.astype(np.int8),
            "user_conf": self.u_conf.copy(),
            "belief_value": self.value.astype(np.int8),
            "action_mask": self.action_mask(),
        }

    # -- helpers -----------------------------------------------------------------------------------------
    def observe(self) -> np.ndarray:
        """(B, S) belief states in the spec's feature order."""
        obs = np.empty((self.goal.shape[0], SPEC.state_dim), np.float32)
        obs[:, CONF] = self.conf
        obs[:, CONFIRMED] = self.confirmed
        obs[:, FILLED] = (self.conf > 0).sum(axis=1)
        obs[:, N_CONFIRMED] = self.confirmed.sum(axis=1)
        for col, arr in (
            (OFFER_PENDING, self.pending),
            (OFFER_ACCEPTED, self.accepted),
            (OFFERS, self.offers),
            (NEGATIONS, self.negations),
            (BOOKED, self.booked),
            (SUCCESS, self.success),
            (TURN, self.turn),
        ):
            obs[:, col] = arr
        return obs

    def action_mask(self) -> np.ndarray:
        return action_mask(self.observe())

    @staticmethod
    def _put(
        act: np.ndarray,
        slot: np.ndarray,
        val: np.ndarray,
        where: np.ndarray,
        row: int | np.ndarray,
        code: int,
        slots: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Write NLU row ``row`` (scalar or per world) of the worlds in ``where``."""
        w = np.flatnonzero(where)
        r = row[w] if isinstance(row, np.ndarray) else row
        act[w, r], slot[w, r], val[w, r] = code, slots[w], values[w]

    def _hear_and_apply(
        self, act: np.ndarray, slot: np.ndarray, val: np.ndarray, worlds: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Pass the user's rows through NLU noise, then update the belief row by row (as the adapter does)."""
        p = self.params
        b = act.shape[0]
        s = np.maximum(slot, 0)
        inform = act == INFORM
        right = rng.random((b, ROWS)) < self.accuracy[:, None] ** np.asarray(p.slot_difficulty)[s]
        right |= ~inform  # yes/no/thanks/bye are always understood
        heard = np.where(right, val, (val + rng.integers(1, N_VALUES[s])) % N_VALUES[s])
        mean = np.where(right, p.confidence_right, p.confidence_wrong)
        conf = np.clip(np.round(_sigmoid(mean + p.confidence_sd * rng.standard_normal((b, ROWS))), 3), 0.05, 0.99)
        conf = conf.astype(np.float32)
        heard = np.where(act >= 0, heard, -1)
        self.u_act[worlds], self.u_slot[worlds] = act[worlds], slot[worlds]
        self.u_value[worlds], self.u_conf[worlds] = heard[worlds], np.where(act >= 0, conf, 0)[worlds]
        for r in range(ROWS):  # in order: a later row may undo an earlier one ("north - no, south")
            a, sl = act[:, r], slot[:, r]
            i = np.flatnonzero(a == INFORM)
            self.value[i, sl[i]] = heard[i, r]
            self.conf[i, sl[i]] = conf[i, r]
            self.confirmed[i, sl[i]] = False
            i = np.flatnonzero((a == AFFIRM) & (sl >= 0))
            self.confirmed[i, sl[i]] = True
            i = np.flatnonzero((a == NEGATE) & (sl >= 0))
            self.value[i, sl[i]], self.conf[i, sl[i]], self.confirmed[i, sl[i]] = -1, 0, False
            withdraw = (a == INFORM) | (a == NEGATE)
            self.pending &= ~withdraw
            self.accepted = (self.accepted & ~withdraw) | ((a == AFFIRM) & (sl < 0))
            self.negations += a == NEGATE
            self.success |= a == THANKYOU


class _TablePolicy(SimPolicy):
    """A policy given by a (B, K) table of action probabilities; samples and reports the propensity."""

    @abstractmethod
    def probs(
        self, dynamics: BatchDynamics, obs: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None
    ) -> np.ndarray:
        """(B, K) probability of each act; zero on unavailable acts."""

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        probs = self.probs(dynamics, observations, goals, goal_mask)
        cum = np.cumsum(probs, axis=1)
        u = rng.random((probs.shape[0], 1)) * cum[:, -1:]
        a = np.minimum((cum <= u).sum(axis=1), N_ACTIONS - 1)
        return a.astype(np.int64), probs[np.arange(a.shape[0]), a].astype(np.float32)


class RandomPolicy(_TablePolicy):
    """Uniform over the available acts."""

    name = "random"

    def probs(
        self, dynamics: BatchDynamics, obs: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None
    ) -> np.ndarray:
        mask = action_mask(obs).astype(np.float64)
        return mask / mask.sum(axis=1, keepdims=True)


class BehaviourPolicy(_TablePolicy):
    """The rule-based dialogue manager such systems run: book a pending offer; explicitly confirm every slot
    heard with confidence below ``threshold`` (every unconfirmed slot once an offer was turned down); request
    missing slots in a fixed order; then offer. With probability ``epsilon`` it deviates to a uniformly chosen
    available act other than bye."""

    name = "behaviour"

    def __init__(self, epsilon: float = 0.2, threshold: float = 0.9) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"behaviour epsilon must be in [0, 1], got {epsilon}")
        self.epsilon, self.threshold = epsilon, threshold

    def rule(self, obs: np.ndarray) -> np.ndarray:
        conf, confirmed = obs[:, CONF], obs[:, CONFIRMED] > 0.5
        filled = conf > 0
        theta = np.where(obs[:, OFFERS] > 0, np.inf, self.threshold)[:, None]
        check = filled & ~confirmed & (conf < theta)
        a = np.full(obs.shape[0], OFFER)
        a = np.where((~filled).any(axis=1), REQUEST + _first_true(~filled), a)
        a = np.where(check.any(axis=1), CONFIRM + _first_true(check), a)
        return np.where(obs[:, OFFER_PENDING] > 0.5, BOOK, a)

    def probs(
        self, dynamics: BatchDynamics, obs: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None
    ) -> np.ndarray:
        mask = action_mask(obs)
        mask[:, BYE] = False
        explore = mask / mask.sum(axis=1, keepdims=True)
        greedy = np.zeros_like(explore)
        greedy[np.arange(obs.shape[0]), self.rule(obs)] = 1.0
        return (1 - self.epsilon) * greedy + self.epsilon * explore


class OraclePolicy(_TablePolicy):
    """Knows the user's goal and which believed values are wrong. Without goals it maximises the reward
    (re-request wrong slots, fill the rest, offer, book); with goals it pursues them (confirms as many slots as
    asked, books when a booking or success is asked for), then says bye."""

    name = "oracle"

    def probs(
        self, dynamics: BatchDynamics, obs: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None
    ) -> np.ndarray:
        d = dynamics
        if not isinstance(d, DialogueDynamics):
            raise ValueError("the dialogue oracle needs DialogueDynamics (it reads the user's hidden goal)")
        b = obs.shape[0]
        right = d.value == d.goal
        wrong, unfilled = (d.value >= 0) & ~right, d.value < 0
        if goals is None or goal_mask is None:
            want_book = np.ones(b, np.bool_)
            confirm_to: np.ndarray = np.zeros(b)
            fill_to: np.ndarray = np.zeros(b)
        else:
            g = np.where(goal_mask, goals, 0.0)
            want_book = (g[:, 2] >= 0.5) | (g[:, 3] >= 0.5)
            confirm_to, fill_to = np.round(g[:, 1]), np.round(g[:, 0])
        need_confirm = d.confirmed.sum(axis=1) < confirm_to
        need_fill = (d.value >= 0).sum(axis=1) < np.maximum(fill_to, 5 * (need_confirm | want_book))
        to_confirm = right & ~d.confirmed
        a = np.where(want_book, OFFER, BYE)
        a = np.where(want_book & d.pending & right.all(axis=1), BOOK, a)
        a = np.where(need_confirm & to_confirm.any(axis=1), CONFIRM + _first_true(to_confirm), a)
        a = np.where(need_fill & unfilled.any(axis=1), REQUEST + _first_true(unfilled), a)
        a = np.where((need_confirm | want_book) & wrong.any(axis=1), REQUEST + _first_true(wrong), a)
        probs = np.zeros((b, N_ACTIONS))
        probs[np.arange(b), a] = 1.0
        return probs


class DialogueSimulator(DomainSimulator):
    """The built-in dialogue domain: restaurant booking with an agenda-based, noisily heard user."""

    domain: ClassVar[str] = "dialogue"
    env_id: ClassVar[str] = "decision_core/Dialogue-v0"
    max_steps: ClassVar[int] = 25

    def spec(self) -> DomainSpec:
        return SPEC

    def dynamics(self, **options: object) -> DialogueDynamics:
        params = options.pop("params", None)
        if options:
            raise ValueError(f"dialogue dynamics takes only 'params' (DialogueParams), got {sorted(options)}")
        if params is not None and not isinstance(params, DialogueParams):
            raise ValueError(f"params must be a DialogueParams, got {type(params).__name__}")
        return DialogueDynamics(params)

    def policies(self) -> dict[str, SimPolicy]:
        return {"behaviour": BehaviourPolicy(), "oracle": OraclePolicy(), "random": RandomPolicy()}

    def goal_set(self) -> Sequence[Goal]:
        return GOALS

    def write_logs(self, episodes: EpisodeBatch, out_dir: Path, *, seed: int, start_episode: int = 0) -> list[Path]:
        """One turn-level CSV (see docs/domains/dialogue.md): user NLU rows and system rows per turn."""
        frame = turn_log(episodes, seed=seed, start_episode=start_episode)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"dialogues_s{seed}_{start_episode:07d}.csv"
        frame.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%S%.3f")
        return [path]


def _value_text() -> np.ndarray:
    """(S+1, V+1) value names; index -1 on either axis (no slot / no value) gives ''."""
    table = np.full((N_SLOTS + 1, int(N_VALUES.max()) + 1), "", dtype="U16")
    for i, s in enumerate(SLOTS):
        table[i, : N_VALUES[i]] = SLOT_VALUES[s]
    return table


def turn_log(episodes: EpisodeBatch, *, seed: int, start_episode: int = 0) -> pl.DataFrame:
    """The raw turn-level log of ``episodes`` (built vectorised; one row per user NLU act or system act)."""
    ex = episodes.extras
    n_ep, t_max = episodes.actions.shape[:2]
    lengths = episodes.lengths
    turns = np.arange(t_max + 1)
    # User rows: turns 0..length (the last answers the final system act); system rows: turns 0..length-1;
    # within a turn the user speaks first.
    ub, ut, ur = np.nonzero((ex["user_act"] >= 0) & (turns[None, :, None] <= lengths[:, None, None]))
    sb, st = np.nonzero(turns[None, :t_max] < lengths[:, None])
    key = (np.concatenate([ub, sb]) * (t_max + 1) + np.concatenate([ut, st])) * (ROWS + 1)
    order = np.argsort(key + np.concatenate([ur, np.full(sb.size, ROWS)]), kind="stable")
    user = order < ub.size
    ui, si = order[user], order[~user] - ub.size
    b = np.where(user, ub[np.minimum(order, ub.size - 1)], sb[np.maximum(order - ub.size, 0)])
    t = np.where(user, ut[np.minimum(order, ub.size - 1)], st[np.maximum(order - ub.size, 0)])
    n, text, slot_names = order.size, _value_text(), np.array([*SLOTS, ""])

    act, slot, value, mask = (np.full(n, "", dtype="U16") for _ in range(4))
    conf, prop = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    u = (ub[ui], ut[ui], ur[ui])
    uslot = ex["user_slot"][u].astype(np.int64)
    act[user] = np.array(USER_ACTS)[ex["user_act"][u]]
    slot[user] = slot_names[uslot]
    value[user] = text[uslot, ex["user_value"][u].astype(np.int64)]
    conf[user] = ex["user_conf"][u]

    a = episodes.actions[sb[si], st[si]].astype(np.int64)
    beliefs = ex["belief_value"][sb[si], st[si]].astype(np.int64)  # (n_sys, S) believed values when acting
    sslot = ACTION_SLOT[a]
    act[~user] = ACTION_ACT[a]
    slot[~user] = slot_names[sslot]
    shown = text[sslot, np.take_along_axis(beliefs, np.maximum(sslot, 0)[:, None], axis=1)[:, 0]]
    # An offer names a venue: one per combination of believed slot values.
    radix = np.cumprod(np.concatenate([[1], N_VALUES[:-1]]))
    venue = np.char.add("R", np.char.zfill((beliefs * radix).sum(axis=1).astype(str), 5))
    value[~user] = np.where(a == OFFER, venue, np.where(a >= CONFIRM, shown, ""))
    prop[~user] = episodes.propensities[sb[si], st[si]]
    bits = np.ascontiguousarray(ex["action_mask"][sb[si], st[si]].astype(np.uint8) + ord("0"))
    mask[~user] = bits.view(f"S{N_ACTIONS}").ravel().astype(f"U{N_ACTIONS}")

    # Timestamps: dialogues start over two weeks; a user turn takes seconds, the system answers within one.
    rng = np.random.default_rng([seed, start_episode, 0x5EED])
    start = np.datetime64("2026-03-02T08:00:00.000") + (rng.uniform(0, 14 * 86400, size=(n_ep,)) * 1e3).astype("m8[ms]")
    speech = rng.gamma(4.0, 1.5, size=(n_ep, t_max + 1))  # seconds the user speaks in each turn
    latency = rng.uniform(0.2, 1.2, size=(n_ep, t_max + 1))  # seconds until the system answers
    heard = np.cumsum(speech + np.pad(latency[:, :-1], ((0, 0), (1, 0))), axis=1)  # user turn t is logged
    offset = heard[b, t] + np.where(user, 0.0, latency[b, t])
    stamp = start[b] + (offset * 1e3).astype("m8[ms]")

    final = episodes.observations[np.arange(n_ep), lengths, SUCCESS] > 0.5
    ids = np.array([f"s{seed}-{start_episode + i:07d}" for i in range(n_ep)])
    empty_is_null = [pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in ("slot", "value", "action_mask")]
    return pl.DataFrame(
        {
            "dialogue_id": ids[b],
            "turn": t.astype(np.int32),
            "speaker": np.where(user, "user", "system"),
            "act": act,
            "slot": slot,
            "value": value,
            "confidence": conf,
            "propensity": prop,
            "action_mask": mask,
            "task_success": final[b],
            "timestamp": stamp,
        }
    ).with_columns(*empty_is_null, pl.col("confidence", "propensity").fill_nan(None))
