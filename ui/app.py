"""The operators' console: `streamlit run ui/app.py` (`make run` starts it with the local stack).

The entry script signs the operator in, finds the system, and hands over to a page in
ui/app_pages/ through `st.navigation`. Configuration: see docs/console.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run ui/app.py` puts ui/ on the path; the pages import the `ui` package from the repo root.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import streamlit as st  # noqa: E402

from reditus_operators.access import Role  # noqa: E402
from ui import access, data, view  # noqa: E402
from ui.access import AccessMode  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"

st.set_page_config(
    page_title="Reditus refunds",
    page_icon=":material/currency_exchange:",
    layout="wide",
    initial_sidebar_state="expanded",
)

identity = access.require_identity()

# Only the pages the role may use are offered (the use cases refuse the rest server-side too).
role = identity.role
operator = role in (Role.OPERATOR, Role.ADMIN)
PAGES = (
    ("queue_refund.py", "Queue a refund", ":material/send:"),
    ("bulk_upload.py", "Bulk upload", ":material/upload_file:"),
    ("history.py", "History", ":material/history:"),
    ("dead_letters.py", "Dead letters", ":material/move_to_inbox:"),
    ("sources.py", "Sources", ":material/webhook:"),
    ("audit.py", "Audit", ":material/policy:"),
)
ALLOWED_PAGES = {
    Role.VIEWER: ("history.py", "sources.py"),
    Role.OPERATOR: ("queue_refund.py", "bulk_upload.py", "history.py", "sources.py"),
    Role.ADMIN: tuple(name for name, _, _ in PAGES),
}
offered = [entry for entry in PAGES if entry[0] in ALLOWED_PAGES[identity.role]]
pages = [
    st.Page(PAGES_DIR / name, title=title, icon=icon, default=index == 0)
    for index, (name, title, icon) in enumerate(offered)
]
page = st.navigation(pages, position="sidebar", expanded=True)

with st.sidebar:
    st.caption("Signed in as" if identity.mode is not AccessMode.OPEN else "Queuing as")
    st.text(identity.requested_by)
    st.caption(f"Role: {identity.role.value}")
    if identity.mode is AccessMode.OPEN:
        st.badge("open console · no sign-in", icon=":material/lock_open:", color="orange")
    elif st.button("Sign out", icon=":material/logout:", type="tertiary"):
        access.sign_out(identity)

if identity.mode is AccessMode.OPEN:
    st.warning(
        "Open console: no sign-in (local stack). Anyone who can reach this page can queue refunds.",
        icon=":material/lock_open:",
    )

try:
    config = data.current_config()
except data.AWS_ERRORS as err:
    view.show_problem(err)
    st.stop()

with st.sidebar:
    st.caption("System")
    st.text(data.describe_system(config))
    st.caption("History table")
    st.text(config.table_name)

try:
    page.run()
except data.AWS_ERRORS as err:  # the pages handle their own; this is the last guard against a traceback
    view.show_problem(err)
