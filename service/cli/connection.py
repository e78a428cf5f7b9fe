"""The one client configuration of the remote commands: the server and API key
from --url / --key, else BITALLOC_URL / BITALLOC_API_KEY, else the local server
(`bitalloc serve` with the same --data folder) and its key file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from service.client import Client


def add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="API address (default $BITALLOC_URL or the local server)")
    p.add_argument("--key", help="API key (default $BITALLOC_API_KEY or the local key)")
    p.add_argument("--data", help="data folder of a local server, for its key")
    p.add_argument("--json", action="store_true", help="print JSON")


def make_client(args: argparse.Namespace) -> Client:
    key = args.key or os.environ.get("BITALLOC_API_KEY")
    url = args.url or os.environ.get("BITALLOC_URL")
    if not key or not url:
        from service.config import get_settings

        if args.data is not None:
            os.environ["BITALLOC_DATA"] = str(Path(args.data).resolve())
        get_settings.cache_clear()
        settings = get_settings()
        if not key and settings.key_file.exists():
            key = settings.key_file.read_text().strip()
        url = url or f"http://{settings.host}:{settings.port}"
    return Client(url, key)
