"""`python -m bench.store_size`: the service on a store of millions of pseudo-labels.

A year of traffic at 30,000 labels a day is ten million rows. For each database
(PostgreSQL, SQLite) and each size (`--rows`, default 1M and 10M), a fresh store is filled
by bulk insert (COPY on PostgreSQL, executemany on SQLite; not through the API) with
synthetic pseudo-labels of the demo tweets spread evenly up to now, and measured beside
the same store empty, in the same run:

- `/label` p50 and p99 at concurrency 1 and 32 (`pfp api`, one process, from a client
  process on the same cores);
- `GET /labels` pages: the newest, a deep page by `after_id`, a deep page with a label
  filter;
- `GET /labels/export` of everything: rows/s and the API process's resident memory
  (before, and its peak during the export, sampled every 0.1 s);
- `GET /stats/labels` over the last day (hourly) and the last month (daily);
- the first `/metrics` scrape (its store figures are read, not cached);
- the dashboard: its page and the four fragments its script loads;
- a job's pool selection (workers/pipeline.py `gather_pool`, default policy) in a process
  of its own: seconds and peak memory above the process at rest; at 1M also with no
  step budget (every stored text), the cost a job had before budgets;
- a retention run over the oldest 10% (archive and delete, the worker's code) while a
  client labels at concurrency 1: rows/s and /label p50/p99 during it.

Results go to bench-results/store/store_size.json and a Markdown table on stdout.
"""
