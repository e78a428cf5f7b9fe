"""Workers: the job pipeline as a plain function (`run_job`), and the torch-free
contract the service reads: what a job asks for and returns (`spec`), what it can
name (`manifest`), and the pipeline's stages (`stages`).

Dependencies point service -> workers, never back: nothing here imports service.
The service's job runtime (Celery app, task, runner, reaper) is `service.worker`;
its task imports `workers.pipeline` when a job runs."""
