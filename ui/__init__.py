"""The operators' console (Streamlit): `streamlit run ui/app.py`."""
