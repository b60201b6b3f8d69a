"""`make simulate`: the service's loop followed over rounds of traffic, with the product's
own code paths, against arms that retrain otherwise or never (docs/simulate.md).

config.py (sizes and arms), data.py (the fixed test split, each seed's first labels and
traffic), service.py (the service in this process), labeler.py (the people who answer the
queues), rounds.py (one arm over one seed), summary.py (the statistics), report.py
(results.md and served.png), run.py (all of it) and __main__.py (the command line).
"""
