"""The study that chose the job defaults: the method against a compute-matched control
(`make repro`). It lives apart from the service: nothing in app/ or workers/ imports it,
and its plot library is an optional extra (`.[research]`)."""
