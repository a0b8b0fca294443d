"""Bulk upload: a CSV of payments, validated row by row, checked against the history, then queued."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from reditus_operators import actions
from reditus_operators.access import Role
from reditus_operators.csv_import import (
    DELIMITER_NAMES,
    MAX_BYTES,
    MAX_LINES,
    MAX_ROWS,
    NOTE_COLUMN,
    PAYMENT_COLUMN,
    CsvError,
    read_header,
)
from ui import access, data, view
from ui.bulk import SAMPLE_CSV, BulkUpload, digest, guess_column, problems_csv, queued_csv, start_upload

UPLOAD = "bulk_upload"
UPLOADER_VERSION = "bulk_uploader_version"
DRY_RUN = "bulk_dry_run"
NO_NOTE = "(no note column)"
HISTORY_PAGE = "app_pages/history.py"

identity = access.require_identity()
try:
    services = data.services()
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()


def _start_over() -> None:
    st.session_state.pop(UPLOAD, None)
    st.session_state.pop(DRY_RUN, None)
    st.session_state[UPLOADER_VERSION] = st.session_state.get(UPLOADER_VERSION, 0) + 1


st.title("Bulk upload")
st.caption(
    f"A CSV file with a `{PAYMENT_COLUMN}` column and an optional `{NOTE_COLUMN}` column, up to "
    f"{MAX_ROWS:,} rows ({MAX_BYTES // (1024 * 1024)} MB, {MAX_LINES:,} lines). Comma, semicolon or tab "
    "separated (read from the header line). Every row is checked before anything is sent; "
    "nothing is queued until you say so."
)

version = st.session_state.get(UPLOADER_VERSION, 0)
uploaded = st.file_uploader(
    "CSV file", type=["csv"], key=f"bulk_file_{version}", max_upload_size=MAX_BYTES // (1024 * 1024)
)
if uploaded is None:
    st.session_state.pop(UPLOAD, None)
    st.download_button(
        "Download an example file",
        SAMPLE_CSV,
        file_name="refunds-example.csv",
        mime="text/csv",
        icon=":material/download:",
        type="tertiary",
        on_click="ignore",
    )
    st.stop()

content = uploaded.getvalue()
try:
    header = read_header(content)
except CsvError as err:
    st.error("This file cannot be used.", icon=":material/block:")
    st.text(str(err))
    st.stop()

# ---- which column is which ----------------------------------------------------------------------
payment_guess = guess_column(header, PAYMENT_COLUMN, ("payment", "charge", "transaction"))
note_guess = guess_column(header, NOTE_COLUMN, ("note", "reason", "comment"))
mapping = st.columns(2)
payment_column = mapping[0].selectbox(
    "Column with the payment ids",
    header,
    index=header.index(payment_guess) if payment_guess else None,
    placeholder="Choose a column",
    key=f"bulk_payment_column_{version}",
    disabled=UPLOAD in st.session_state and st.session_state[UPLOAD].started,
)
note_choice = mapping[1].selectbox(
    "Column with the notes",
    [NO_NOTE, *header],
    index=header.index(note_guess) + 1 if note_guess else 0,
    key=f"bulk_note_column_{version}",
    disabled=UPLOAD in st.session_state and st.session_state[UPLOAD].started,
)
if payment_column is None:
    st.info(
        f"This file has no `{PAYMENT_COLUMN}` column: choose the column that holds the payment ids.",
        icon=":material/table_view:",
    )
    st.stop()
columns = {PAYMENT_COLUMN: payment_column, NOTE_COLUMN: "" if note_choice == NO_NOTE else note_choice}

# ---- validate every row (once per file and mapping: the refund ids are fixed from here on) -------
upload: BulkUpload | None = st.session_state.get(UPLOAD)
if upload is None or upload.file_digest != digest(content) or upload.columns != columns:
    try:
        with st.spinner("Checking every row…"):
            upload = start_upload(content, uploaded.name, columns, identity.requested_by)
    except CsvError as err:
        st.error("This file cannot be used.", icon=":material/block:")
        st.text(str(err))
        st.stop()
    st.session_state[UPLOAD] = upload
    st.session_state.pop(DRY_RUN, None)

if not upload.history_checked:
    bar = st.progress(0.0, text="Looking up the payments in the history…")

    def _checked(done: int, total: int) -> None:
        bar.progress(
            done / max(total, 1), text=f"Looking up the payments in the history: {done:,} of {total:,}"
        )

    try:
        upload.check_history(services.store, progress=_checked)
    except data.AWS_ERRORS as err:
        view.show_problem(err)
        st.stop()
    bar.empty()

# ---- the preview ----------------------------------------------------------------------------------
FORCE_KEY = f"bulk_force_{version}"
if not upload.started and FORCE_KEY in st.session_state:  # the checkbox below, as of this run
    upload.send_history_matches = bool(st.session_state[FORCE_KEY])
report = upload.report
history_matches = upload.history_problems()
figures = st.columns(5)
figures[0].metric("Rows", f"{report.rows:,}", border=True)
figures[1].metric("Ready to queue", f"{len(upload.to_send()):,}", border=True)
figures[2].metric(
    "Invalid", f"{len(report.invalid):,}", border=True, help="Rows that break the message contract."
)
figures[3].metric(
    "Repeated in the file",
    f"{len(report.duplicates):,}",
    border=True,
    help="Only the first row of a payment counts.",
)
figures[4].metric(
    "In the history",
    f"{len(history_matches):,}",
    border=True,
    help="Payments the history already has a 200 or an unsettled request for: not queued unless you "
    "choose to send them with force.",
)

st.caption(f"Read as {DELIMITER_NAMES[report.delimiter]}-separated values.")
problems = upload.problems()
problems_tab, ready_tab = st.tabs([f"Problems ({len(problems):,})", f"Ready ({len(upload.to_send()):,})"])
with problems_tab:
    if problems:
        st.dataframe(
            pd.DataFrame(
                {
                    "line": [p.line for p in problems],
                    "payment_id": [p.payment_id for p in problems],
                    "reason": [p.reason for p in problems],
                }
            ),
            hide_index=True,
            column_config={
                "line": st.column_config.NumberColumn("Line", format="%d", width=70),
                "payment_id": st.column_config.TextColumn("Payment", width="medium"),
                "reason": st.column_config.TextColumn("Reason", width="large"),
            },
            height=view.table_height(len(problems), 12, 420),
        )
        st.download_button(
            "Download the problems (CSV)",
            problems_csv(problems),
            file_name=f"problems-{uploaded.name}",
            mime="text/csv",
            icon=":material/download:",
            on_click="ignore",
            type="tertiary",
        )
    else:
        st.success("Every row is fine.", icon=":material/check_circle:")
with ready_tab:
    ready = upload.to_send()
    st.dataframe(
        pd.DataFrame(
            {
                "line": [line for line, _ in ready],
                "payment_id": [r.payment_id for _, r in ready],
                "note": [r.note or "" for _, r in ready],
                "force": [r.force for _, r in ready],
            }
        ),
        hide_index=True,
        column_config={
            "line": st.column_config.NumberColumn("Line", format="%d", width=70),
            "payment_id": st.column_config.TextColumn("Payment", width="medium"),
            "note": st.column_config.TextColumn("Note", width="large"),
            "force": st.column_config.CheckboxColumn("Force", width=70),
        },
        height=view.table_height(len(ready), 12, 420),
    )

# ---- dry run, then queue --------------------------------------------------------------------------
if not upload.started:
    if identity.role is Role.ADMIN:
        upload.send_history_matches = st.checkbox(
            f"Also queue the {len(history_matches):,} payment(s) that already have a 200 or a pending "
            "request (sent with force)",
            value=upload.send_history_matches,
            disabled=not history_matches,
            key=FORCE_KEY,
        )
    elif history_matches:
        st.caption("Only an admin can queue the payments the history already has (with force).")
    to_send = upload.to_send()
    skipped = report.rows - len(to_send)
    buttons = st.container(horizontal=True)
    with buttons:
        dry_run = st.button(
            "Dry run", icon=":material/science:", help="Shows what would be sent; sends nothing."
        )
        queue = st.button(
            f"Queue {len(to_send):,} refund(s)",
            type="primary",
            icon=":material/send:",
            disabled=not to_send,
            key="bulk_queue",
        )
        st.button("Upload another file", type="tertiary", on_click=_start_over, key="bulk_start_over_early")
    if queue:
        try:
            actions.check_bulk(data.acting(identity), [request for _, request in to_send])
        except data.DENIED as err:
            st.error(str(err), icon=":material/block:")
            st.stop()
        upload.start_sending()  # drawn again without these buttons, with a progress bar instead
        st.rerun()
    if dry_run:
        st.session_state[DRY_RUN] = (len(to_send), skipped)
    dry = st.session_state.get(DRY_RUN)
    if dry:
        would_send, would_skip = dry
        st.info(
            f"Dry run, nothing was sent: {would_send:,} refund(s) would be queued with source csv, and "
            f"{would_skip:,} row(s) skipped (see Problems).",
            icon=":material/science:",
        )
    st.stop()

if upload.remaining() and (upload.sending or not upload.finished):
    bar = st.progress(0.0, text="Queuing…")
    total = len(upload.to_send())

    def _sent(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Queuing: {done:,} of {total:,}")

    try:
        # Checked again where it sends: the role may have changed, or the session been tampered with.
        actions.check_bulk(data.acting(identity), [request for _, request in upload.remaining()])
    except data.DENIED as err:
        upload.sending = False
        st.error(str(err), icon=":material/block:")
        st.stop()
    file = {
        "file_name": uploaded.name,
        "size": len(content),
        "sha256": upload.file_digest,
        "rows": report.rows,
        "invalid": len(report.invalid),
        "duplicates": len(report.duplicates),
    }
    try:
        upload.send(
            lambda requests, chunk_progress, into, minted: data.send_batch(
                services, requests, chunk_progress, into, minted
            ),
            _sent,
        )
    except data.AWS_ERRORS as err:
        upload.sending = False
        data.clear_query_caches()
        # What was queued before the failure exists now: audited at once (the operator may never retry).
        stopped = upload.unaudited()
        if (stopped.sent or stopped.failed) and actions.record_bulk(
            data.acting(identity), stopped, file, err
        ):
            upload.mark_audited(stopped)  # else the entry at the end accounts for them
        view.show_problem(err)
        st.caption(
            f"{len(upload.queued):,} of {total:,} were queued before the failure; the rest were not sent."
        )
        st.button(f"Retry the remaining {len(upload.remaining()):,}", type="primary", key="bulk_retry")
        st.stop()
    bar.empty()
    data.clear_query_caches()
    finished = upload.unaudited()
    actions.record_bulk(data.acting(identity), finished, file)
    upload.mark_audited(finished)
elif upload.started and not upload.finished:
    upload.finished_at = upload.started_at

# ---- the summary ----------------------------------------------------------------------------------
st.success(
    f"Queued {len(upload.queued):,} refund(s) in {upload.elapsed_seconds:.1f} s; "
    f"{report.rows - len(upload.queued) - len(upload.failed):,} row(s) skipped.",
    icon=":material/check_circle:",
)
if upload.failed:
    st.warning(f"{len(upload.failed):,} refund(s) were refused by the queue.", icon=":material/warning:")
    st.dataframe(
        [
            {"line": line, "payment_id": request.payment_id, "reason": reason}
            for line, request, reason in sorted(upload.failed.values(), key=lambda row: row[0])
        ],
        hide_index=True,
    )
after = st.container(horizontal=True, vertical_alignment="center")
with after:
    st.download_button(
        "Download the refund ids (CSV)",
        queued_csv(upload),
        file_name=f"queued-{uploaded.name}",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
    )
    st.page_link(HISTORY_PAGE, label="Follow them in History", icon=":material/history:")
    st.button("Upload another file", on_click=_start_over, key="bulk_start_over")
