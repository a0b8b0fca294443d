"""Dead letters: the refund requests SQS gave up on; redrive them to the refund queue, or delete them."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from ui import access, data, view

TABLE_VERSION = "dead_letter_table_version"
PENDING_ACTION = "dead_letter_pending_action"
LAST_ACTION = "dead_letter_last_action"

identity = access.require_identity()
try:
    services = data.services()
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

header = st.container(horizontal=True, vertical_alignment="bottom")
with header:
    st.title("Dead letters", anchor=False)
    if st.button("Refresh", icon=":material/refresh:", key="dead_letters_refresh"):
        data.cached_dead_letters.clear()

st.caption(
    "Refund requests whose retries were used up. Fix the cause first (the last error says what it was: "
    "the API key, a Reditus outage, bad data), then redrive them to the refund queue."
)

if services.dead_letters is None:
    st.info(
        "No dead-letter queue is configured for this console: set DEAD_LETTER_QUEUE_URL "
        f"(or {data.ENV_STACK_NAME}).",
        icon=":material/info:",
    )
    st.stop()


def _run_action(action: str, message_ids: tuple[str, ...] | None) -> None:
    try:
        if action == "delete":
            assert message_ids is not None
            done = data.delete_dead_letters(services, list(message_ids), data.acting(identity))
            st.session_state[LAST_ACTION] = (
                "success",
                f"Deleted {len(done)} message(s) from the dead-letter queue.",
            )
        else:
            done = data.redrive_dead_letters(
                services, None if message_ids is None else list(message_ids), data.acting(identity)
            )
            st.session_state[LAST_ACTION] = (
                "success",
                f"Moved {len(done)} message(s) back to the refund queue; the submitter picks them up now.",
            )
        wanted = None if message_ids is None else len(message_ids)
        if wanted is not None and len(done) < wanted:
            st.session_state[LAST_ACTION] = (
                "warning",
                f"{len(done)} of {wanted} message(s) were handled; the others were no longer in the queue "
                "or not visible yet (try again in a minute).",
            )
    except data.DENIED as err:
        st.session_state[LAST_ACTION] = ("warning", str(err))
    except data.AWS_ERRORS as err:
        st.session_state[LAST_ACTION] = data.explain(err)
    # A new table widget: the old selection pointed at rows that may be gone.
    st.session_state[TABLE_VERSION] = st.session_state.get(TABLE_VERSION, 0) + 1


last = st.session_state.get(LAST_ACTION)
if isinstance(last, data.Problem):
    view.show_problem(last)
elif last is not None:
    kind, message = last
    (st.success if kind == "success" else st.warning)(message)

try:
    letters = data.cached_dead_letters(services.key, services)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

st.metric("Messages in the dead-letter queue", f"{letters.approximate_count:,}", border=True, width=320)
if not letters.rows:
    st.success("The dead-letter queue is empty.", icon=":material/check_circle:")
    st.stop()

table_key = f"dead_letter_table_{st.session_state.get(TABLE_VERSION, 0)}"
frame = pd.DataFrame(
    {
        "sent_at": [
            datetime.fromtimestamp(row.letter.sent_at_ms / 1000, tz=UTC).replace(tzinfo=None)
            if row.letter.sent_at_ms
            else None
            for row in letters.rows
        ],
        "payment_id": [row.letter.payment_id or "" for row in letters.rows],
        "receive_count": [row.letter.receive_count for row in letters.rows],
        "outcome": [[row.outcome] if row.outcome else [] for row in letters.rows],
        "last_error": [row.last_error for row in letters.rows],
        "refund_id": [row.letter.refund_id or "" for row in letters.rows],
        "body": [row.letter.body[:300] for row in letters.rows],
        "message_id": [row.letter.message_id for row in letters.rows],
    }
)
st.dataframe(
    frame,
    hide_index=True,
    on_select="rerun",
    selection_mode="multi-row",
    placeholder="—",
    key=table_key,
    column_config={
        "sent_at": st.column_config.DatetimeColumn(
            "First sent (UTC)", format="YYYY-MM-DD HH:mm:ss", width=150
        ),
        "payment_id": st.column_config.TextColumn("Payment", width=160),
        "receive_count": st.column_config.NumberColumn(
            "Receives",
            format="%d",
            width=80,
            help="How often SQS handed the message out, this page's own looks included.",
        ),
        "outcome": view.outcome_column("History says"),
        "last_error": st.column_config.TextColumn("Last error", width=300),
        "refund_id": st.column_config.TextColumn("Refund id", width=290),
        "body": st.column_config.TextColumn("Message body", width=300),
        "message_id": st.column_config.TextColumn("Message id", width=290),
    },
)
if len(letters.rows) < letters.approximate_count:
    st.caption(
        f"Showing {len(letters.rows):,} of about {letters.approximate_count:,}: messages being redriven or "
        "received elsewhere are hidden for a moment."
    )

selected_ids = tuple(
    letters.rows[i].letter.message_id for i in view.selected_rows(table_key) if 0 <= i < len(letters.rows)
)
pending = st.session_state.get(PENDING_ACTION)
buttons = st.container(horizontal=True)
with buttons:
    if st.button(
        f"Redrive {len(selected_ids)} selected" if selected_ids else "Redrive selected",
        icon=":material/replay:",
        disabled=not selected_ids,
        key="redrive_selected",
    ):
        st.session_state[PENDING_ACTION] = ("redrive", selected_ids)
        st.rerun()
    if st.button(f"Redrive all ({letters.approximate_count:,})", icon=":material/replay:", key="redrive_all"):
        st.session_state[PENDING_ACTION] = ("redrive", None)
        st.rerun()
    if st.button(
        f"Delete {len(selected_ids)} selected" if selected_ids else "Delete selected",
        icon=":material/delete:",
        disabled=not selected_ids,
        key="delete_selected",
    ):
        st.session_state[PENDING_ACTION] = ("delete", selected_ids)
        st.rerun()

if pending:
    action, message_ids = pending
    how_many = "all the messages" if message_ids is None else f"{len(message_ids)} message(s)"
    with st.container(border=True):
        if action == "delete":
            st.error(
                f"Delete {how_many} permanently? Their refunds will not be sent; the history keeps their "
                "records (requeue them from History later if needed).",
                icon=":material/delete_forever:",
            )
            label = "Delete permanently"
        else:
            st.warning(f"Move {how_many} back to the refund queue?", icon=":material/replay:")
            label = "Redrive"
        confirm, cancel = st.columns([1, 4])
        if confirm.button(label, type="primary", key="confirm_dead_letter_action"):
            st.session_state.pop(PENDING_ACTION, None)
            with st.spinner("Working…"):
                _run_action(action, message_ids)
            st.rerun()
        if cancel.button("Cancel", key="cancel_dead_letter_action"):
            st.session_state.pop(PENDING_ACTION, None)
            st.rerun()
