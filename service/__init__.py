"""Service: the FastAPI app, database models and migrations, auth, dashboard,
and the `bitalloc` command line with its Python client. Never imports torch at
module level: the local pipeline is loaded only by `bitalloc run`."""
