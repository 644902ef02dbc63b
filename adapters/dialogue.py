"""Dialogue adapter: turn-level logs of task-oriented booking dialogues -> belief-state steps.

Raw format (one CSV row per user NLU act or system act; full description in docs/domains/dialogue.md): within a
turn the user speaks first (one row per act the NLU heard, with its confidence), then the system answers with
one act, its logged propensity and the mask of acts it had available. A dialogue of N system acts has user
turns 0..N (the last is the user's answer to the final act) and system turns 0..N-1.

Each system row becomes one step. Its state is the belief a rule-based tracker holds just before the act,
built from every earlier row of the dialogue (see ``decision_core/envs/dialogue.py`` for the update rules);
its next state is the belief just before the next system act, or after the dialogue's last row. The belief
features are running values over the dialogue, computed without grouping: after sorting, each dialogue's first
row resets every running value, so plain forward fills and cumulative sums never leak across dialogues.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl

from adapters.base import Adapter, RawColumn
from decision_core.envs.dialogue import (
    ACTION_LABELS,
    AFFIRM,
    BOOK,
    BYE,
    CONFIRM,
    INFORM,
    N_ACTIONS,
    N_SLOTS,
    NEGATE,
    OFFER,
    REQUEST,
    SLOTS,
    SPEC,
    SUCCESS_REWARD,
    THANKYOU,
    TURN_COST,
    USER_ACTS,
)
from decision_core.errors import IngestError
from decision_core.schema import DomainSpec

#: Codes of every act name (user acts first, so a user act's code is its index in USER_ACTS) and slot.
_ACT_CODES = {
    name: i for i, name in enumerate(dict.fromkeys((*USER_ACTS, "request", "confirm", "offer", "book", "bye")))
}
_SLOT_CODES = {name: i for i, name in enumerate(SLOTS)}
_START = "_start"
_LAST = "_last"


def _running_last(event: pl.Expr) -> pl.Expr:
    """Value of the latest non-null ``event`` so far in the dialogue (0 before the first)."""
    return pl.when(pl.col(_START)).then(event.fill_null(0.0)).otherwise(event).forward_fill()


def _running_count(event: pl.Expr) -> pl.Expr:
    """Number of rows so far in the dialogue where ``event`` holds."""
    x = event.fill_null(False).cast(pl.Int32)
    total = x.cum_sum()
    return total - pl.when(pl.col(_START)).then(total - x).otherwise(None).forward_fill()


def _in_dialogue_order(frame: pl.DataFrame) -> bool:
    """Whether each dialogue's rows are contiguous, by turn, the user's before the system's."""
    dlg = pl.col("dialogue_id")
    key = pl.col("turn").cast(pl.Int64) * 2 + (~pl.col("_user")).cast(pl.Int64)
    same = (dlg == dlg.shift(1)).fill_null(False)
    found = frame.select(
        ((~same).sum() == dlg.n_unique()).alias("contiguous"),
        (~same | (key >= key.shift(1))).all().alias("ordered"),
    )
    return bool(found["contiguous"][0] and found["ordered"][0])


class DialogueAdapter(Adapter):
    """Turn-level dialogue logs (user NLU acts with confidences, system acts with propensities)."""

    name: ClassVar[str] = "dialogue"
    version: ClassVar[str] = "1.0"
    episode_columns: ClassVar[tuple[str, ...]] = ("dialogue_id",)
    columns: ClassVar[dict[str, RawColumn]] = {
        "dialogue_id": RawColumn(pl.String(), description="dialogue (episode) id"),
        "turn": RawColumn(pl.Int32(), description="0-based turn; the user speaks first in each turn"),
        "speaker": RawColumn(pl.String(), description="'user' or 'system'"),
        "act": RawColumn(pl.String(), description="dialogue act (user: inform, affirm, ...; system: request, ...)"),
        "slot": RawColumn(pl.String(), required=False, description="slot the act is about; empty if none"),
        "confidence": RawColumn(pl.Float64(), required=False, description="NLU confidence of a user act"),
        "propensity": RawColumn(pl.Float64(), required=False, description="probability of the system act"),
        "action_mask": RawColumn(pl.String(), required=False, description="available system acts, one 0/1 each"),
        "task_success": RawColumn(pl.Boolean(), required=False, description="the dialogue's final outcome"),
        "timestamp": RawColumn(pl.Datetime("us"), required=False, description="when the act was logged"),
    }

    def spec(self) -> DomainSpec:
        return SPEC

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        present = raw.collect_schema().names()
        for column in ("slot", "confidence"):
            if column not in present:
                raise IngestError(
                    file="",
                    column=column,
                    rule="missing column (the dialogue adapter derives the belief state from it)",
                    hint="add the column (empty where it does not apply) or map yours with --mapping FILE",
                )

        def optional(column: str, dtype: pl.DataType) -> pl.Expr:
            return pl.col(column) if column in present else pl.lit(None, dtype)

        act, slot, slotless = pl.col("_act"), pl.col("_slot"), pl.col("slot").is_null()
        coded = raw.with_columns(
            (pl.col("speaker") == "user").alias("_user"),
            pl.col("act").replace_strict(_ACT_CODES, default=-1, return_dtype=pl.Int8).alias("_act"),
            pl.col("slot").replace_strict(_SLOT_CODES, default=-1, return_dtype=pl.Int8).fill_null(-1).alias("_slot"),
        ).with_columns(
            pl.when(pl.col("_user")).then(pl.when(act < len(USER_ACTS)).then(act).otherwise(-1)).alias("_uact"),
            pl.when(pl.col("_user"))
            .then(None)
            .when((act == _ACT_CODES["request"]) & (slot >= 0))
            .then(REQUEST + slot)
            .when((act == _ACT_CODES["confirm"]) & (slot >= 0))
            .then(CONFIRM + slot)
            .when((act == _ACT_CODES["offer"]) & slotless)
            .then(OFFER)
            .when((act == _ACT_CODES["book"]) & slotless)
            .then(BOOK)
            .when((act == _ACT_CODES["bye"]) & slotless)
            .then(BYE)
            .otherwise(-1)
            .alias("_action"),
        )
        # Materialised once: the checks and the belief pass both read the coded acts. Logs are usually written
        # dialogue by dialogue in turn order; sorting (the costliest step) is only done when they are not.
        frame = coded.collect()
        if not _in_dialogue_order(frame):
            frame = frame.sort("dialogue_id", "turn", ~pl.col("_user"), "source_row")
        coded = frame.lazy()
        self._check(coded, present)
        dlg = pl.col("dialogue_id")
        flagged = coded.with_columns(
            (dlg != dlg.shift(1)).fill_null(True).alias(_START),
            (dlg != dlg.shift(-1)).fill_null(True).alias(_LAST),
        )
        ua, sl, conf = pl.col("_uact"), pl.col("_slot"), pl.col("confidence").cast(pl.Float32)
        inform, affirm, negate = (pl.col("_user") & (ua == code) for code in (INFORM, AFFIRM, NEGATE))
        offer = ~pl.col("_user") & (pl.col("_action") == OFFER)
        book = ~pl.col("_user") & (pl.col("_action") == BOOK)
        withdraw = inform | negate
        running: dict[str, pl.Expr] = {}
        for k, s in enumerate(SLOTS):
            running[f"{s}_conf"] = _running_last(
                pl.when(inform & (sl == k)).then(conf).when(negate & (sl == k)).then(0.0)
            )
            running[f"{s}_confirmed"] = _running_last(
                pl.when(affirm & (sl == k)).then(1.0).when(withdraw & (sl == k)).then(0.0)
            )
        running["offer_pending"] = _running_last(pl.when(offer).then(1.0).when(withdraw).then(0.0))
        running["offer_accepted"] = _running_last(
            pl.when(offer).then(0.0).when(affirm & (sl < 0)).then(1.0).when(withdraw).then(0.0)
        )
        running["offers_made"] = _running_count(offer)
        running["negations"] = _running_count(negate)
        running["booked"] = _running_count(book)
        running["task_success"] = _running_count(pl.col("_user") & (ua == THANKYOU))
        running["_ended"] = _running_count(pl.col("act") == "bye")
        running["_logged_success"] = _running_last(optional("task_success", pl.Boolean()).cast(pl.Float32))

        after = flagged.with_columns(expr.alias(name) for name, expr in running.items())
        # Keep the system rows (belief just before each) and each dialogue's last row (belief after it).
        kept = after.with_columns(
            pl.when(pl.col(_START)).then(0).otherwise(pl.col(n).shift(1)).alias(f"_pre{n}") for n in running
        ).filter(~pl.col("_user") | pl.col(_LAST))
        # A step's next state: after the dialogue if it is the last row; else before the next system act, or
        # after the last row when only user rows follow.
        next_user = pl.col("_user").shift(-1).fill_null(True)
        with_next = kept.with_columns(
            *(
                pl.when(pl.col(_LAST))
                .then(pl.col(n))
                .when(next_user)
                .then(pl.col(n).shift(-1))
                .otherwise(pl.col(f"_pre{n}").shift(-1))
                .alias(f"_nxt{n}")
                for n in running
            ),
            (pl.col(_LAST) | next_user).alias("_last_step"),
        ).filter(~pl.col("_user"))
        terminated = pl.col("_last_step") & (pl.col("_nxt_ended") > 0)
        reward = -TURN_COST + SUCCESS_REWARD * (terminated & (pl.col("_nxt_logged_success") > 0.5)).cast(pl.Float64)
        if "task_success" not in present:
            reward = pl.lit(None, pl.Float64)
        logged_mask = optional("action_mask", pl.String())
        mask = pl.when(logged_mask.is_not_null()).then(
            pl.concat_arr([logged_mask.str.slice(k, 1) == "1" for k in range(N_ACTIONS)])
        )
        return with_next.select(
            dlg.alias("episode_id"),
            pl.col("turn").alias("step"),
            self._state("_pre", pl.col("turn")).alias("state"),
            pl.concat_arr(pl.col("_action").cast(pl.Float32)).alias("action"),
            mask.otherwise(self._derived_mask("_pre")).alias("action_mask"),
            optional("propensity", pl.Float64()).alias("propensity"),
            reward.alias("reward"),
            self._state("_nxt", pl.col("turn") + 1).alias("next_state"),
            terminated.alias("terminated"),
            (pl.col("_last_step") & ~terminated).alias("truncated"),
            optional("timestamp", pl.Datetime("us")).alias("timestamp"),
            pl.col("source_row"),
        )

    @staticmethod
    def _state(prefix: str, turn: pl.Expr) -> pl.Expr:
        """The spec's state vector from the running belief columns named ``prefix + feature``."""
        conf = [pl.col(f"{prefix}{s}_conf") for s in SLOTS]
        confirmed = [pl.col(f"{prefix}{s}_confirmed") for s in SLOTS]
        parts = [
            *conf,
            *confirmed,
            pl.sum_horizontal(c > 0 for c in conf),
            pl.sum_horizontal(confirmed),
            pl.col(f"{prefix}offer_pending"),
            pl.col(f"{prefix}offer_accepted"),
            pl.col(f"{prefix}offers_made"),
            pl.col(f"{prefix}negations"),
            pl.col(f"{prefix}booked") > 0,
            pl.col(f"{prefix}task_success") > 0,
            turn,
        ]
        return pl.concat_arr([p.cast(pl.Float32) for p in parts])

    @staticmethod
    def _derived_mask(prefix: str) -> pl.Expr:
        """The act mask the belief implies, for logs without one (same rule as the simulator's)."""
        conf = [pl.col(f"{prefix}{s}_conf") > 0 for s in SLOTS]
        return pl.concat_arr(
            [
                *(pl.lit(True) for _ in range(CONFIRM)),
                *conf,
                pl.sum_horizontal(c.cast(pl.Int32) for c in conf) >= N_SLOTS,
                pl.col(f"{prefix}offer_pending") > 0,
                pl.lit(True),
            ]
        )

    def _check(self, coded: pl.LazyFrame, present: list[str]) -> None:
        """Raise :class:`IngestError` at the first raw row that breaks a dialogue rule (one pass over the rows)."""
        user, ua, slot = pl.col("_user"), pl.col("_uact"), pl.col("_slot")
        conf = pl.col("confidence")
        rules: list[tuple[str, pl.Expr, str, str]] = [
            ("speaker", ~pl.col("speaker").is_in(["user", "system"]), "speaker must be 'user' or 'system'", ""),
            (
                "act",
                ~user & (pl.col("_action") < 0),
                "action outside the space: a system act must be one of " + ", ".join(ACTION_LABELS),
                "act and slot together name the act, e.g. act 'request' with slot 'area'",
            ),
            ("act", user & (ua < 0), "unknown user act; expected one of " + ", ".join(USER_ACTS), ""),
            (
                "slot",
                user & (ua == INFORM) & (slot < 0),
                "a user inform needs a known slot (" + ", ".join(SLOTS) + ")",
                "",
            ),
            (
                "confidence",
                user & (ua == INFORM) & ~((conf > 0) & (conf <= 1)).fill_null(False),
                "NaN, missing or out-of-range confidence on a user inform (it sets the slot's confidence feature)",
                "confidences must be in (0, 1]; fix or drop the row",
            ),
        ]
        if "action_mask" in present:
            rules.append(
                (
                    "action_mask",
                    ~user & ~pl.col("action_mask").str.contains(f"^[01]{{{N_ACTIONS}}}$").fill_null(True),
                    f"an action mask is {N_ACTIONS} characters 0/1, one per act in the order "
                    + ", ".join(ACTION_LABELS),
                    "",
                )
            )
        found = coded.select(
            *(pl.col("source_row").filter(bad).first().alias(f"row{i}") for i, (_, bad, _, _) in enumerate(rules)),
            *(
                pl.col(col).cast(pl.String).filter(bad).first().alias(f"value{i}")
                for i, (col, bad, _, _) in enumerate(rules)
            ),
        ).collect()
        for i, (column, _, rule, hint) in enumerate(rules):
            row = found[f"row{i}"][0]
            if row is not None:
                raise IngestError(
                    file="", row=int(row), column=column, rule=rule, hint=hint, value=found[f"value{i}"][0]
                )
