"""`pfp`, the command line: running the service (`serve`, `api`, `worker`, `beat`,
`bootstrap`: `main.py`) and operating a running one over HTTP (`import-gold`, `label`,
`export`: `data.py`; `jobs.py`; `models.py`; their HTTP client: `client.py`)."""

from app.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
