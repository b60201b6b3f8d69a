"""The operator dashboard served by the API at /dashboard (templates, charts, static files)."""
