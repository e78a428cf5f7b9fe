"""Service: the FastAPI app, database models and migrations, auth, dashboard,
the database-backed job runtime (`service.worker`: Celery app, task, runner,
reaper), and the `bitalloc` command line with its Python client.

Dependencies point service -> workers, never back: nothing under workers/,
sensitivity/, kernels/ or solver/ imports service. The service imports only the
torch-free modules of the other packages (the contract `workers.spec`,
`workers.manifest`, `workers.stages`; `sensitivity.catalog`, `sensitivity.metrics`,
`sensitivity.sources`, `sensitivity.data.formats`; `kernels.scheme`). The places
that run the pipeline, the Celery task and `bitalloc run` / `latency`, import
`workers.pipeline` / `workers.latency` inside the function, so the API process
never loads torch (tests/test_import_graph.py holds all of this)."""
