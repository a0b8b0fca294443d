"""Audit: who did what, when, to how many refunds (admins only; the reads are refused to others)."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from reditus_operators import actions
from reditus_operators.access import Action
from reditus_operators.audit import audit_csv
from reditus_operators.config import ConfigError
from reditus_refunds.aws_errors import AwsError, BotoCoreError, ClientError
from ui import access, data, view

identity = access.require_identity()
ctx = data.acting(identity)
try:
    actions.check_audit(ctx)
except data.DENIED as err:
    st.error(str(err), icon=":material/block:")
    st.stop()

st.title("Audit")
st.caption(
    "Every operator action, appended only: queue, uploads, requeues, decisions, dead letters, exports, "
    "sign-in failures and refusals."
)
today = datetime.now(UTC).date()
filters = st.columns([2, 2, 2])
with filters[0]:
    chosen = st.date_input(
        "From, to", value=data.default_period(today, 7), max_value=today, key="audit_period"
    )
    days = list(chosen) if isinstance(chosen, tuple | list) else [chosen]
    since = days[0] if days else today
    until = days[-1] if days else since
with filters[1]:
    who = (st.text_input("Who", key="audit_who", placeholder="exact identity") or "").strip() or None
with filters[2]:
    action = st.selectbox("Action", ["", *(a.value for a in Action)], key="audit_action") or None
try:
    page = data.read_audit(who, action, since, until)
except (ValueError, ConfigError, AwsError, BotoCoreError, ClientError) as err:
    st.error(str(err))
    st.stop()
rows = [
    {
        "at": view.utc_timestamp(e.at),
        "who": e.who,
        "as": e.who_name,
        "channel": e.channel,
        "role": e.role,
        "action": e.action,
        "result": e.result,
        "count": e.count,
        "refund_ids": " ".join(e.refund_ids[:5]),
        "reason": e.reason,
    }
    for e in page.entries
]
if not rows:
    st.info("No audit records match.", icon=":material/search_off:")
st.dataframe(rows, hide_index=True, key="audit_table")


def _export() -> bytes:
    content = audit_csv(page.entries)
    actions.record_export(ctx, "audit", len(page.entries), [], format="csv")
    return content


st.download_button(
    "Export CSV",
    data=_export,
    file_name=f"audit-{since}-{until}.csv",
    mime="text/csv",
    icon=":material/download:",
    on_click="ignore",
)
