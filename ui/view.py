"""Drawing helpers shared by the pages: outcome labels and colours, tables, charts, problems.

Every value that came from an operator or from Reditus is drawn as text (`st.text`, `st.code`,
dataframe cells, chart data), never as Markdown or HTML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Literal

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.elements.lib.column_types import ColumnConfig

from reditus_refunds.records import HistoryRecord, Outcome, parse_iso

from .data import Problem, explain

OUTCOME_LABELS: dict[Outcome, str] = {
    Outcome.REFUNDED: "refunded · 200",
    Outcome.REJECTED: "rejected · 400",
    Outcome.NOT_FOUND: "not found · 404",
    Outcome.INVALID: "invalid",
    Outcome.DUPLICATE: "duplicate",
    Outcome.FAILED: "failed",
    Outcome.DEAD_LETTERED: "dead-lettered",
    Outcome.PENDING: "pending",
    Outcome.RETRYING: "retrying",
}
OUTCOME_COLORS: dict[Outcome, str] = {
    Outcome.REFUNDED: "#2f9e61",
    Outcome.REJECTED: "#d9480f",
    Outcome.NOT_FOUND: "#f08c00",
    Outcome.INVALID: "#862e9c",
    Outcome.DUPLICATE: "#868e96",
    Outcome.FAILED: "#c92a2a",
    Outcome.DEAD_LETTERED: "#5c0f0f",
    Outcome.PENDING: "#1c7ed6",
    Outcome.RETRYING: "#74c0fc",
}

BadgeColor = Literal["red", "orange", "yellow", "blue", "green", "violet", "gray"]
OUTCOME_BADGES: dict[Outcome, BadgeColor] = {
    Outcome.REFUNDED: "green",
    Outcome.REJECTED: "red",
    Outcome.NOT_FOUND: "orange",
    Outcome.INVALID: "violet",
    Outcome.DUPLICATE: "gray",
    Outcome.FAILED: "red",
    Outcome.DEAD_LETTERED: "red",
    Outcome.PENDING: "blue",
    Outcome.RETRYING: "blue",
}

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:])")


def escape_markdown(text: str) -> str:
    """Text that Markdown shows literally (for the rare label that must include a value)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def outcome_label(value: str | Outcome) -> str:
    try:
        return OUTCOME_LABELS[Outcome(value)]
    except ValueError:
        return str(value)


def badge_color(value: str | Outcome) -> BadgeColor:
    try:
        return OUTCOME_BADGES[Outcome(value)]
    except ValueError:
        return "gray"


def show_problem(err: BaseException | Problem) -> None:
    """A clear message instead of a traceback: what failed, and what to check."""
    problem = err if isinstance(err, Problem) else explain(err)
    st.error(escape_markdown(problem.what), icon=":material/cloud_off:")
    st.caption(escape_markdown(problem.check))


def draw_field(label: str, value: object) -> None:
    """A labelled value; the value is drawn as plain text."""
    st.caption(label)
    st.text("—" if value is None or value == "" else str(value))


def utc_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_iso(text).replace(tzinfo=None)
    except ValueError:
        return None


def readable_time(text: str | None) -> str | None:
    """2026-11-26T13:45:01.123Z -> 2026-11-26 13:45:01.123 UTC."""
    stamp = utc_timestamp(text)
    return (
        None
        if stamp is None
        else stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d} UTC"
    )


def history_frame(records: Sequence[HistoryRecord]) -> pd.DataFrame:
    """The History table: one row per refund, in the order given (newest first)."""
    return pd.DataFrame(
        {
            "queued_at": pd.Series([utc_timestamp(r.queued_at) for r in records], dtype="datetime64[ns]"),
            "outcome": [[r.outcome.value] for r in records],
            "http_status": pd.Series([r.http_status for r in records], dtype="Int64"),
            "payment_id": [r.payment_id or "" for r in records],
            "requested_by": [r.requested_by or "" for r in records],
            "note": [r.note or "" for r in records],
            "attempts": pd.Series([r.attempts for r in records], dtype="Int64"),
            "detail": [r.detail for r in records],
            "source": [r.source or "" for r in records],
            "source_event_id": [r.source_event_id or "" for r in records],
            "refund_id": [r.refund_id for r in records],
        }
    )


def outcome_column(label: str = "Outcome") -> ColumnConfig:
    outcomes = list(Outcome)
    return st.column_config.MultiselectColumn(
        label,
        options=[o.value for o in outcomes],
        color=[OUTCOME_COLORS[o] for o in outcomes],
        format_func=outcome_label,
        width=140,
    )


def history_column_config() -> dict[str, ColumnConfig]:
    return {
        "queued_at": st.column_config.DatetimeColumn("Queued (UTC)", format="YYYY-MM-DD HH:mm:ss", width=150),
        "outcome": outcome_column(),
        "http_status": st.column_config.NumberColumn("HTTP", format="%d", width=56),
        "payment_id": st.column_config.TextColumn("Payment", width=170),
        "requested_by": st.column_config.TextColumn("Requested by", width=150),
        "note": st.column_config.TextColumn("Note", width=180),
        "attempts": st.column_config.NumberColumn("Attempts", format="%d", width=76),
        "detail": st.column_config.TextColumn("Reditus said", width=240),
        "source": st.column_config.TextColumn("Source", width=76),
        "source_event_id": st.column_config.TextColumn(
            "Source event", width=200, help="The billing provider's event that asked for the refund."
        ),
        "refund_id": st.column_config.TextColumn("Refund id", width=290),
    }


def outcomes_chart(rows: list[dict[str, object]], days: Sequence[date]) -> alt.Chart:
    """Stacked bars: refunds per UTC day of the period, coloured by outcome (in OUTCOME_LABELS order)."""
    frame = pd.DataFrame(rows, columns=["day", "outcome", "count"])
    frame["label"] = [outcome_label(str(o)) for o in frame["outcome"]]
    frame["day_label"] = [date.fromisoformat(str(d)).strftime("%b %d") for d in frame["day"]]
    frame["order"] = [list(OUTCOME_LABELS).index(Outcome(str(o))) for o in frame["outcome"]]
    day_labels = [day.strftime("%b %d") for day in days]
    present = [o for o in OUTCOME_LABELS if o.value in set(frame["outcome"])]
    return (
        alt.Chart(frame)
        .mark_bar(cornerRadiusTopLeft=2, cornerRadiusTopRight=2)
        .encode(
            x=alt.X(
                "day_label:O",
                title=None,
                sort=day_labels,
                scale=alt.Scale(domain=day_labels),
                axis=alt.Axis(labelAngle=0, labelOverlap="greedy"),
            ),
            y=alt.Y("sum(count):Q", title="Refunds", axis=alt.Axis(format="d", tickMinStep=1)),
            color=alt.Color(
                "label:N",
                title=None,
                scale=alt.Scale(
                    domain=[OUTCOME_LABELS[o] for o in present], range=[OUTCOME_COLORS[o] for o in present]
                ),
                legend=alt.Legend(orient="bottom", columns=len(present)),
            ),
            order=alt.Order("order:Q", sort="ascending"),
            tooltip=[
                alt.Tooltip("day:N", title="Day (UTC)"),
                alt.Tooltip("label:N", title="Outcome"),
                alt.Tooltip("count:Q", title="Refunds"),
            ],
        )
        .properties(height=220)
    )


def table_height(rows: int, limit: int = 15, tall: int = 560) -> int | Literal["auto"]:
    """Short tables fit their rows; long ones scroll inside a fixed height."""
    return "auto" if rows <= limit else tall


def selected_rows(widget_key: str) -> list[int]:
    """Row positions selected in the dataframe drawn with `key=widget_key`."""
    state = st.session_state.get(widget_key)
    if state is None:
        return []
    try:
        rows = state["selection"]["rows"]
    except (KeyError, TypeError):
        return []
    return [int(r) for r in rows]
