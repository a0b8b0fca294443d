"""History: headline figures, outcomes per day, the refunds table, one refund's detail, export, requeue."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import streamlit as st

from reditus_operators.history import START_OF_TIME
from reditus_refunds.records import REQUEUEABLE, HistoryRecord, Outcome, parse_iso
from ui import access, data, view

TABLE_KEY = "history_table"
CURSORS = "history_cursors"
CURSOR_FILTER = "history_cursor_filter"
PENDING_REQUEUE = "history_pending_requeue"
LAST_REQUEUE = "history_last_requeue"
PERIODS = {"Today": 1, "7 days": 7, "30 days": 30, "90 days": 90}
CUSTOM = "Custom"
ALL_OUTCOMES = "all"
ALL_TIME_SINCE = START_OF_TIME.date()
WATCH_SECONDS = 3

identity = access.require_identity()
try:
    services = data.services()
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()


# ---- one refund -------------------------------------------------------------------------------
def _duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    try:
        seconds = (parse_iso(end) - parse_iso(start)).total_seconds()
    except ValueError:
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _draw_detail(record: HistoryRecord, closable: bool) -> None:
    top = st.container(horizontal=True, vertical_alignment="center")
    with top:
        st.subheader("Refund", anchor=False, width="content")
        st.badge(view.outcome_label(record.outcome), color=view.badge_color(record.outcome))
        if record.force:
            st.badge("forced", color="orange", icon=":material/warning:")
        st.space("stretch")
        if (
            record.outcome in REQUEUEABLE
            and identity.role.value != "viewer"
            and st.button(
                "Requeue this refund", icon=":material/replay:", key=f"requeue_one_{record.refund_id}"
            )
        ):
            st.session_state[PENDING_REQUEUE] = (record.refund_id,)
            st.rerun()
        if closable:
            st.button(
                "Close", icon=":material/close:", on_click=_close_detail, key=f"close_{record.refund_id}"
            )
    st.code(record.refund_id, language=None)

    first, second, third, fourth = st.columns(4)
    with first:
        view.draw_field("Payment", record.payment_id)
        view.draw_field("HTTP status", record.http_status)
    with second:
        view.draw_field("Requested by", record.requested_by)
        view.draw_field("Source", record.source)
        if record.source_event_id:
            view.draw_field("Source event", record.source_event_id)
    with third:
        view.draw_field("Queued", view.readable_time(record.queued_at))
        view.draw_field("Completed", view.readable_time(record.completed_at))
    with fourth:
        view.draw_field("Time to settle", _duration(record.queued_at, record.completed_at))
        view.draw_field("Attempts", record.attempts)

    view.draw_field("Note", record.note)
    view.draw_field("Reditus response", record.detail)
    if record.error_kind:
        view.draw_field("Error kind", record.error_kind)
    for label, other in (("Requeue of", record.requeue_of), ("Duplicate of", record.duplicate_of)):
        if other:
            st.caption(label)
            if st.button(
                other,
                key=f"open_{label}_{record.refund_id}",
                type="tertiary",
                icon=":material/arrow_forward:",
            ):
                _open(other)

    st.caption("Attempts")
    if record.attempt_log:
        st.dataframe(
            [
                {
                    "at": view.utc_timestamp(a.at),
                    "http_status": a.http_status,
                    "kind": a.kind,
                    "latency_ms": a.latency_ms,
                    "detail": a.detail,
                }
                for a in record.attempt_log
            ],
            hide_index=True,
            column_config={
                "at": st.column_config.DatetimeColumn("At (UTC)", format="YYYY-MM-DD HH:mm:ss.SSS"),
                "http_status": st.column_config.NumberColumn("HTTP", format="%d"),
                "kind": st.column_config.TextColumn("Kind"),
                "latency_ms": st.column_config.NumberColumn("Latency", format="%d ms"),
                "detail": st.column_config.TextColumn("Reditus said", width="large"),
            },
        )
    else:
        st.text("No attempt yet.")

    try:
        touched = data.refund_actions(record.refund_id)
    except data.AWS_ERRORS:
        touched = []
    st.caption("Actions that touched it")
    if touched:
        st.dataframe(
            [
                {
                    "at": view.utc_timestamp(e.at),
                    "who": e.who,
                    "action": e.action,
                    "result": e.result,
                    "count": e.count,
                }
                for e in touched
            ],
            hide_index=True,
            key=f"refund_actions_{record.refund_id}",
        )
    else:
        st.text("None recorded.")

    with st.expander("The whole record (JSON)"):
        st.code(json.dumps(record.to_dict(), indent=2, ensure_ascii=False), language="json")


def _detail_panel(refund_id: str, closable: bool = False) -> None:
    """The refund's detail; while it is unsettled, read again every few seconds."""
    try:
        record = data.read_refund(services.store, refund_id)
    except data.AWS_ERRORS as err:
        view.show_problem(err)
        return
    if record is None:
        st.warning("No refund with this refund_id in the history.", icon=":material/search_off:")
        st.text(refund_id)
        if closable:
            st.button("Close", icon=":material/close:", on_click=_close_detail, key="close_missing")
        return
    _draw_detail(record, closable)
    if not record.outcome.terminal:
        st.caption(f"Not settled yet: this view reads it again every {WATCH_SECONDS} seconds.")
        _watch(refund_id, record.outcome.value)


@st.fragment(run_every=WATCH_SECONDS)
def _watch(refund_id: str, seen: str) -> None:
    """Reruns the page when the watched refund's outcome changes."""
    try:
        record = data.read_refund(services.store, refund_id)
    except data.AWS_ERRORS:
        return
    if record is not None and record.outcome.value != seen:
        data.clear_query_caches()
        st.rerun(scope="app")


def _open(refund_id: str) -> None:
    st.query_params["refund_id"] = refund_id
    st.rerun()


def _close_detail() -> None:
    st.query_params.pop("refund_id", None)


# ---- requeue ----------------------------------------------------------------------------------
def _draw_requeue_confirmation() -> None:
    pending: tuple[str, ...] = st.session_state.get(PENDING_REQUEUE) or ()
    if not pending:
        return
    with st.container(border=True):
        st.warning(
            f"Requeue {len(pending)} refund(s) under new refund ids? Each new request points at the old one "
            f"and is recorded as requested by you.",
            icon=":material/replay:",
        )
        st.text("\n".join(pending[:20]) + (f"\n… and {len(pending) - 20} more" if len(pending) > 20 else ""))
        confirm, cancel = st.columns([1, 4])
        if confirm.button("Confirm requeue", type="primary", icon=":material/check:"):
            st.session_state.pop(PENDING_REQUEUE, None)
            try:
                result = data.requeue_refunds(services, list(pending), data.acting(identity))
            except data.DENIED as err:
                st.session_state[LAST_REQUEUE] = data.Problem(str(err), "Ask an operator or an admin.")
            except data.AWS_ERRORS as err:
                st.session_state[LAST_REQUEUE] = data.explain(err)
            else:
                st.session_state[LAST_REQUEUE] = result
            st.rerun()
        if cancel.button("Cancel", key="cancel_requeue"):
            st.session_state.pop(PENDING_REQUEUE, None)
            st.rerun()


def _draw_requeue_result() -> None:
    result = st.session_state.get(LAST_REQUEUE)
    if result is None:
        return
    if isinstance(result, data.Problem):
        view.show_problem(result)
    elif isinstance(result, data.RequeueResult):
        sent = result.report.sent
        if sent:
            st.success(
                f"Requeued {len(sent)} refund(s) under new refund ids.", icon=":material/check_circle:"
            )
            st.dataframe(
                [
                    {"payment_id": r.payment_id, "new refund_id": r.refund_id, "requeue of": r.requeue_of}
                    for r in sent
                ],
                hide_index=True,
            )
        refused = result.refused + [(r.refund_id, reason) for r, reason in result.report.failed]
        if refused:
            st.warning(f"{len(refused)} refund(s) were not requeued.", icon=":material/warning:")
            st.dataframe([{"refund_id": rid, "reason": reason} for rid, reason in refused], hide_index=True)
    if st.button("Dismiss", key="dismiss_requeue", type="tertiary"):
        st.session_state.pop(LAST_REQUEUE, None)
        st.rerun()


# ---- the page ---------------------------------------------------------------------------------
header = st.container(horizontal=True, vertical_alignment="bottom")
with header:
    st.title("History", anchor=False)
    if st.button("Refresh", icon=":material/refresh:", key="history_refresh"):
        data.clear_query_caches()

today = datetime.now(UTC).date()
filters = st.columns([3.4, 1.4, 1.4, 1.4])
with filters[0]:
    period = st.segmented_control(
        "Period (UTC days)", [*PERIODS, CUSTOM], default="7 days", key="history_period", required=True
    )
    if period == CUSTOM:
        chosen = st.date_input(
            "From, to",
            value=data.default_period(today, 30),
            max_value=today,
            key="history_custom_period",
            format="YYYY-MM-DD",
        )
        days = list(chosen) if isinstance(chosen, tuple | list) else [chosen]
        since = days[0] if days and isinstance(days[0], date) else today
        until = days[-1] if days and isinstance(days[-1], date) else since
    else:
        since, until = data.default_period(today, PERIODS.get(period or "7 days", 7))
with filters[1]:
    outcome_choice = st.selectbox(
        "Outcome",
        [ALL_OUTCOMES, *(o.value for o in Outcome)],
        format_func=lambda o: "All outcomes" if o == ALL_OUTCOMES else view.outcome_label(o),
        key="history_outcome",
    )
    outcome = None if outcome_choice in (None, ALL_OUTCOMES) else Outcome(outcome_choice)
with filters[2]:
    payment_id = st.text_input(
        "Payment id", key="history_payment_id", placeholder="exact payment_id", help="Searches all time."
    )
with filters[3]:
    requested_by = st.text_input(
        "Requested by", key="history_requested_by", placeholder="exact name or e-mail"
    )

history_filter = data.HistoryFilter(
    since=since,
    until=until,
    outcome=outcome,
    payment_id=(payment_id or "").strip() or None,
    requested_by=(requested_by or "").strip() or None,
)
# "Did the refund for this payment reach Reditus, and when?": a payment search covers all time.
table_filter = (
    data.HistoryFilter(ALL_TIME_SINCE, today, outcome, history_filter.payment_id, history_filter.requested_by)
    if history_filter.payment_id
    else history_filter
)

refund_param = st.query_params.get("refund_id")
if refund_param:
    with st.container(border=True, key="refund_detail"):
        _detail_panel(refund_param, closable=True)

_draw_requeue_result()
_draw_requeue_confirmation()

# Headline figures and the chart: one counter item per day of the period.
try:
    headline = data.cached_headline(services.key, since, until, services.store)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()
for column, (label, value, help_text) in zip(st.columns(6), headline.figures, strict=True):
    column.metric(label, f"{value:,}", help=help_text, border=True)
chart_rows = headline.chart_rows()
if chart_rows:
    period_days = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    st.altair_chart(view.outcomes_chart(chart_rows, period_days), width="stretch")
else:
    st.caption(f"No refunds queued between {since} and {until} (UTC).")

# The table: one page at a time through the store's indexed queries.
table_controls = st.container(horizontal=True, vertical_alignment="bottom")
with table_controls:
    st.subheader("Refunds", anchor=False)
    page_size = st.selectbox(
        "Rows per page",
        data.PAGE_SIZES,
        index=data.PAGE_SIZES.index(data.DEFAULT_PAGE_SIZE),
        width=130,
        key="history_page_size",
    )

signature = (table_filter, page_size)
if st.session_state.get(CURSOR_FILTER) != signature:
    st.session_state[CURSOR_FILTER] = signature
    st.session_state[CURSORS] = [None]
cursors: list[str | None] = st.session_state[CURSORS]
cursor = cursors[-1]
try:
    page = data.cached_history_page(services.key, table_filter, cursor, page_size, services.store)
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

if table_filter.payment_id:
    st.caption("Payment searches cover all time.")
if not page.records:
    st.info("No refunds match these filters.", icon=":material/search_off:")
table_key = f"{TABLE_KEY}_{abs(hash((signature, cursor))) % 10**8}"
st.dataframe(
    view.history_frame(page.records),
    hide_index=True,
    column_config=view.history_column_config(),
    on_select="rerun",
    selection_mode="multi-row",
    placeholder="—",
    key=table_key,
    height=view.table_height(len(page.records)),
)

pager = st.container(horizontal=True, vertical_alignment="center")
with pager:
    first_row = (len(cursors) - 1) * page_size + 1
    if st.button("Newer", icon=":material/chevron_left:", disabled=len(cursors) == 1, key="history_newer"):
        cursors.pop()
        st.rerun()
    st.caption(
        width="content",
        body=f"Page {len(cursors)} · rows {first_row:,} to {first_row + len(page.records) - 1:,}"
        if page.records
        else f"Page {len(cursors)}",
    )
    if st.button("Older", icon=":material/chevron_right:", disabled=page.cursor is None, key="history_older"):
        cursors.append(page.cursor)
        st.rerun()

# Actions on the selection, and the export of every filtered row.
selected = [page.records[i] for i in view.selected_rows(table_key) if 0 <= i < len(page.records)]
requeueable = [r for r in selected if r.outcome in REQUEUEABLE]
actions = st.container(horizontal=True, vertical_alignment="center")
with actions:
    if identity.role.value != "viewer" and st.button(
        f"Requeue {len(requeueable)} selected" if requeueable else "Requeue selected",
        icon=":material/replay:",
        disabled=not requeueable,
        help="Refunds that ended not found (404), rejected, failed or in the dead-letter queue.",
        key="history_requeue_selected",
    ):
        st.session_state[PENDING_REQUEUE] = tuple(r.refund_id for r in requeueable)
        st.rerun()

    store, export_filter, ctx = services.store, table_filter, data.acting(identity)

    def _export() -> bytes:
        try:
            content, _, _ = data.export_csv(store, export_filter, ctx=ctx)
        except data.AWS_ERRORS as err:
            problem = data.explain(err)
            return f"# export failed: {problem.what} {problem.check}\n".encode()
        return content

    st.download_button(
        "Export CSV",
        data=_export,
        file_name=f"refund-history-{table_filter.since}-{table_filter.until}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        help=f"Every row these filters match (up to {data.EXPORT_LIMIT:,}).",
    )
    if selected and len(selected) != len(requeueable):
        st.caption("Only refunds that ended 404, rejected, failed or dead-lettered can be requeued.")

if len(selected) == 1 and selected[0].refund_id != refund_param:
    with st.container(border=True, key="selected_refund_detail"):
        _detail_panel(selected[0].refund_id)
elif not selected and not refund_param:
    st.caption("Select a row to see its detail; select several to requeue them.")

with st.expander("Open a refund by id"), st.form("open_refund", border=False):
    wanted = st.text_input("Refund id", key="history_open_refund_id")
    if st.form_submit_button("Open", icon=":material/search:") and wanted and wanted.strip():
        _open(wanted.strip())
