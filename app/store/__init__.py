"""The store: pseudo-labels, gold examples, jobs and model versions (SQLAlchemy 2)."""
