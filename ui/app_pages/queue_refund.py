"""Queue a refund: one payment, checked with the shared contract and against the history first."""

from __future__ import annotations

import streamlit as st

from reditus_refunds.contract import MAX_NOTE, MAX_PAYMENT_ID, ContractError
from reditus_refunds.records import Outcome
from ui import access, data, view

HISTORY_PAGE = "app_pages/history.py"
LAST_RESULT = "queue_last_result"
WATCH_SECONDS = 3


identity = access.require_identity()


def _queue() -> None:
    """The form's submit: runs before the page is drawn again, so it may clear the fields."""
    state = st.session_state
    try:
        result = data.queue_refund(
            data.services(),
            payment_id=state.get("queue_payment_id") or "",
            note=state.get("queue_note") or None,
            force=bool(state.get("queue_force")),
            requested_by=identity.requested_by,
            ctx=data.acting(identity),
        )
    except data.DENIED as err:
        state[LAST_RESULT] = data.Refusal(str(err))
        return
    except ContractError as err:
        state[LAST_RESULT] = data.Refusal(err.reason)
        return
    except data.AWS_ERRORS as err:
        state[LAST_RESULT] = data.explain(err)
        return
    state[LAST_RESULT] = result
    if result.sent:
        state["queue_payment_id"] = ""
        state["queue_note"] = ""
        state["queue_force"] = False


st.title("Queue a refund")
st.caption(
    "Reject the Reditus commission on one refunded payment. Use it when billing did not send the refund "
    "automatically. Nothing is sent until the request passes the same checks the queue applies."
)

form_column, result_column = st.columns([3, 2], gap="large")

with form_column, st.form("queue_refund", enter_to_submit=False, border=True):
    st.text_input(
        "Payment id",
        key="queue_payment_id",
        max_chars=MAX_PAYMENT_ID,
        placeholder="pay_…",
        help="The payment_id Reditus knows the payment by, exactly as billing has it.",
    )
    st.text_area(
        "Note",
        key="queue_note",
        max_chars=MAX_NOTE,
        placeholder="Why: for example “refunded by support, ticket 4821”",
        height=96,
    )
    if identity.role.value == "admin":
        st.checkbox(
            "Force: send even if this payment already has a 200 or a pending request",
            key="queue_force",
            help="Without it, a payment that was already refunded (or is being refunded) is not sent again.",
        )
    st.form_submit_button("Queue refund", type="primary", icon=":material/send:", on_click=_queue)


@st.fragment(run_every=WATCH_SECONDS)
def _watch(refund_id: str) -> None:
    """The refund just queued, read again every few seconds until it settles."""
    try:
        record = data.read_refund(data.services().store, refund_id)
    except data.AWS_ERRORS:
        return  # the History page says more; this is only a live hint
    if record is None:
        st.caption("Status: waiting for the record…")
        return
    st.caption("Status")
    st.badge(view.outcome_label(record.outcome), color=view.badge_color(record.outcome))
    if record.outcome in (Outcome.PENDING, Outcome.RETRYING):
        st.caption(f"Updates every {WATCH_SECONDS} seconds until Reditus has answered.")
    elif record.detail:
        st.text(record.detail)


with result_column:
    result = st.session_state.get(LAST_RESULT)
    if result is None:
        st.info(
            "The refund is queued under a new refund_id. The submitter sends it to Reditus within "
            "seconds; follow it in History.",
            icon=":material/info:",
        )
    elif isinstance(result, data.Refusal):
        st.error("Not sent: the request is not valid.", icon=":material/block:")
        st.text(result.reason)
    elif isinstance(result, data.Problem):
        view.show_problem(result)
    elif isinstance(result, data.QueueResult) and not result.sent:
        st.warning("Not sent: this payment already has a refund.", icon=":material/warning:")
        st.text(result.warning or "")
        st.caption("Tick Force and queue again to send it anyway.")
        if result.match:
            st.page_link(
                HISTORY_PAGE,
                label="Open the earlier refund in History",
                icon=":material/open_in_new:",
                query_params={"refund_id": result.match.refund_id},
            )
    elif isinstance(result, data.QueueResult):
        st.success("Refund queued.", icon=":material/check_circle:")
        view.draw_field("Payment", result.request.payment_id)
        st.caption("Refund id")
        st.code(result.request.refund_id, language=None)
        if result.warning:
            st.warning("Sent with force, although:", icon=":material/warning:")
            st.text(result.warning)
        _watch(result.request.refund_id)
        st.page_link(
            HISTORY_PAGE,
            label="Open it in History",
            icon=":material/open_in_new:",
            query_params={"refund_id": result.request.refund_id},
        )
