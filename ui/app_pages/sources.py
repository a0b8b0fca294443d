"""Sources: the billing systems' webhooks, what they sent, and the partial refunds awaiting a decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from reditus_operators.webhooks import DECISION_COLUMNS
from ui import access, data, view

PERIODS = {"Today": 1, "7 days": 7, "30 days": 30}
LAST_DECISION = "sources_last_decision"

identity = access.require_identity()
try:
    services = data.services()
    hooks = data.webhook_services(services)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

header = st.container(horizontal=True, vertical_alignment="bottom")
with header:
    st.title("Sources", anchor=False)
    if st.button("Refresh", icon=":material/refresh:", key="sources_refresh"):
        data.clear_webhook_caches()

st.caption(
    "Billing systems that announce refunds through signed webhooks. Each full refund is queued by itself; "
    "a partial refund waits below for your decision (Reditus can only reject the whole commission)."
)


def _decide(action: str, refund_id: str) -> None:
    try:
        if action == "submit":
            done = data.submit_partial_refund(services, refund_id, data.acting(identity))
            message = (
                f"Queued refund {done.refund_id}."
                if done.message_id
                else f"Refund {done.refund_id} had been queued already; the review is closed."
            )
        else:
            data.dismiss_partial_refund(services, refund_id, data.acting(identity))
            message = f"Dismissed {refund_id}: nothing was queued. A later event for it opens it again."
        st.session_state[LAST_DECISION] = ("success", message)
    except data.REVIEW_ERRORS + data.DENIED as err:
        st.session_state[LAST_DECISION] = ("warning", str(err))
    except data.AWS_ERRORS as err:
        st.session_state[LAST_DECISION] = data.explain(err)


last = st.session_state.get(LAST_DECISION)
if isinstance(last, data.Problem):
    view.show_problem(last)
elif last is not None:
    kind, text = last
    (st.success if kind == "success" else st.warning)(view.escape_markdown(text))

# ---- per provider ---------------------------------------------------------------------------------
period = st.segmented_control(
    "Period (UTC days)", list(PERIODS), default="7 days", key="sources_period", required=True
)
since, until = data.default_period(datetime.now(UTC).date(), PERIODS.get(period or "7 days", 7))
try:
    rows = data.cached_sources(services.key, since, until, hooks.reader, services.config)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()


def _configured(value: bool | None) -> str:
    if value is None:
        return "check its secret"
    return "yes" if value else "no secret"


frame = pd.DataFrame(
    {
        "provider": [r.provider for r in rows],
        "url": [r.url or "not deployed" for r in rows],
        "configured": [_configured(r.configured) for r in rows],
        "last_received_at": pd.Series(
            [view.utc_timestamp(str(r.last["last_received_at"])) if r.last else None for r in rows],
            dtype="datetime64[ns]",
        ),
        "last_decision": [str(r.last["last_decision"]) if r.last else "" for r in rows],
        **{name: [int(r.counts.get(name, 0)) for r in rows] for name, _ in DECISION_COLUMNS},
    }
)
st.dataframe(
    frame,
    hide_index=True,
    placeholder="—",
    key="sources_table",
    column_config={
        "provider": st.column_config.TextColumn("Provider", width=110),
        "url": st.column_config.TextColumn(
            "Webhook URL",
            width=320,
            help="Register this URL in the provider's dashboard (docs/webhooks-providers.md).",
        ),
        "configured": st.column_config.TextColumn(
            "Configured",
            width=110,
            help="Local stack: whether its signing secret is set. Deployed: check the provider's secret "
            "in Secrets Manager (its ARN is the stack's webhook secret output or parameter).",
        ),
        "last_received_at": st.column_config.DatetimeColumn(
            "Last event (UTC)", format="YYYY-MM-DD HH:mm:ss", width=150
        ),
        "last_decision": st.column_config.TextColumn("Last decision", width=120),
        **{
            name: st.column_config.NumberColumn(label, format="%d", width=90)
            for name, label in DECISION_COLUMNS
        },
    },
)
if not any(r.url for r in rows):
    st.caption(
        "No webhook receiver URL is known: the receiver is not deployed with this stack, or set "
        "REDITUS_WEBHOOK_URL."
    )
if any(r.configured is None for r in rows):
    st.caption(
        "Deployed stack: a provider is configured when its secret in Secrets Manager holds the signing "
        "secret (aws secretsmanager describe-secret --secret-id <the secret's ARN>)."
    )

# ---- partial refunds awaiting a decision ----------------------------------------------------------
st.subheader("Partial refunds awaiting a decision", anchor=False)
try:
    reviews = data.cached_open_reviews(services.key, hooks.reader)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

if not reviews:
    st.success("No partial refund awaits a decision.", icon=":material/check_circle:")
    st.stop()

st.caption(
    f"{len(reviews)} partial refund(s), oldest first. Submit rejects the affiliate's whole commission for "
    f"the payment; Dismiss keeps it. Either is recorded as decided by {identity.requested_by}."
)
for review in reviews:
    with st.container(border=True, key=f"review_{review.refund_id}"):
        top = st.container(horizontal=True, vertical_alignment="center")
        with top:
            st.badge(review.provider, color="blue")
            st.text(review.refund_id)
            st.space("stretch")
            if identity.role.value != "viewer" and st.button(
                "Submit", icon=":material/send:", type="primary", key=f"submit_{review.refund_id}"
            ):
                _decide("submit", review.refund_id)
                st.rerun()
            if identity.role.value != "viewer" and st.button(
                "Dismiss", icon=":material/close:", key=f"dismiss_{review.refund_id}"
            ):
                _decide("dismiss", review.refund_id)
                st.rerun()
        first, second, third = st.columns(3)
        with first:
            view.draw_field("Payment", review.request.payment_id)
        with second:
            view.draw_field("Event", review.event_id)
        with third:
            view.draw_field("Opened", view.readable_time(review.opened_at))
        view.draw_field("Why it waits", review.reason)
