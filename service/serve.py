"""`bitalloc serve`: migrate, make the local key on first start, start an
embedded worker process (restarted if it dies), then serve the API."""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service import crud
from service.config import Settings
from service.db.migrate import upgrade
from service.db.session import session_scope

log = logging.getLogger("bitalloc.serve")
LOCAL_TENANT = "local"
PR_SET_PDEATHSIG = 1


def ensure_local_key(settings: Settings) -> str:
    """The key in the data folder if it still works, else a new one for tenant `local`."""
    path = settings.key_file
    with session_scope(settings.db_url) as session:
        if path.exists():
            key = path.read_text().strip()
            if crud.tenant_for_key(session, key) is not None:
                return key
        _, key = crud.create_api_key(session, LOCAL_TENANT, label="bitalloc serve")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


def _die_with_parent() -> None:
    """In the child: SIGTERM when `bitalloc serve` dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class WorkerProcess:
    """`bitalloc worker` as a child process, restarted when it dies unexpectedly."""

    def __init__(self, max_restarts_per_minute: int = 5):
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.max_restarts = max_restarts_per_minute
        self.restarts: list[float] = []
        self.watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)

    def start(self) -> None:
        self._spawn()
        self.watcher.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"],
                                     start_new_session=True, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > self.max_restarts:
                log.error("worker exited %d times in a minute (last status %s); not "
                          "restarting: jobs stay queued until a worker runs", self.max_restarts,
                          code)
                return
            log.warning("worker exited with status %s; restarting", code)
            time.sleep(2)
            if not self.stopping.is_set():
                self._spawn()

    def stop(self, grace_s: float = 20.0) -> None:
        self.stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def banner(settings: Settings, key: str) -> str:
    base = f"http://{settings.host}:{settings.port}"
    return "\n".join([
        "",
        f"bitalloc is serving on {base}",
        f"  dashboard: {base}/   API docs: {base}/docs   REST API: {base}/v1",
        f"  data folder: {settings.data_path}   database: {settings.db_url.split(':', 1)[0]}"
        f"   broker: {settings.broker_url.split(':', 1)[0]}",
        f"  API key (tenant {LOCAL_TENANT}): {key}",
        "  try:",
        f"    curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\",
        f"      -d '{{\"model\": \"digits-cnn\", \"budgets\": {{\"avg_bits\": 4}}}}' {base}/v1/jobs",
        "",
    ])


def _announce(server, text: str) -> None:
    """Print the address and key once the server accepts connections."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        print(text, flush=True)


def _announce_when_healthy(settings: Settings, text: str, stop: threading.Event) -> None:
    """The same for several API processes: once one of them answers /healthz."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection(host, settings.port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                print(text, flush=True)
                return
        except OSError:
            pass
        stop.wait(0.2)


def api_processes(settings: Settings) -> int:
    """How many API processes to run: `api_workers`, but one for an in-memory
    database (each process would have its own)."""
    if ":memory:" in settings.db_url or "mode=memory" in settings.db_url:
        return 1
    return settings.api_workers


def serve(settings: Settings, with_worker: bool = True) -> None:
    import uvicorn

    from service.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    key = ensure_local_key(settings)
    worker = WorkerProcess() if with_worker else None
    if worker is not None:
        worker.start()
    text = banner(settings, key)
    try:
        processes = api_processes(settings)
        if processes > 1:
            _serve_processes(settings, processes, text)
            return
        # one process holds the whole rate limit, whatever api_workers asked for
        app = create_app(settings.model_copy(update={"api_workers": 1}))
        config = uvicorn.Config(app, host=settings.host, port=settings.port,
                                log_level="info", access_log=settings.access_log)
        server = uvicorn.Server(config)
        threading.Thread(target=_announce, args=(server, text), daemon=True).start()
        # uvicorn re-raises SIGTERM after its graceful shutdown; exit through
        # `finally` then, so the worker is stopped too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.run()
    finally:
        if worker is not None:
            worker.stop()


def _serve_processes(settings: Settings, processes: int, text: str) -> None:
    """`processes` API processes on one socket, each building the app from the
    environment (`bitalloc serve` exported its flags there); the supervisor
    replaces one that dies, and returns on SIGTERM or SIGINT once all have stopped."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("service.main:create_app", factory=True, host=settings.host,
                            port=settings.port, workers=processes, log_level="info",
                            access_log=settings.access_log)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    stop = threading.Event()
    threading.Thread(target=_announce_when_healthy, args=(settings, text, stop),
                     daemon=True).start()
    try:
        supervisor.run()
    finally:
        stop.set()
