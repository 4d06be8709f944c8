"""Scripts run in the reference environment (.venv-ref: shap, shapiq), never imported here."""
