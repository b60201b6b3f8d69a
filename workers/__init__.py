"""Celery workers: the retraining job, the first-model bootstrap and beat's schedule."""
