"""The Celery queues, named in one place for the Celery app, `pfp worker` and the docs.

Training jobs have a queue of their own, so that the machine that should train (a GPU)
can be the only one listening to it: `pfp worker --queues training`. So has the scoring of
new traffic for a candidate waiting for reviews, which loads two models. Everything else
(beat's check for new pseudo-labels, the re-judging of candidates waiting for reviews, the
stale-job sweep, retention runs) is light and goes to `maintenance`. A worker started
without --queues listens to both.
"""

TRAINING_QUEUE = "training"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (TRAINING_QUEUE, MAINTENANCE_QUEUE)
