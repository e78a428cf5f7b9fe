"""The dashboard's files as served: everything local (no asset from the
internet), every script and style it references present, the built-in models
of the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db.session import dispose_engines
from service.main import create_app
from workers.manifest import builtin_model_names, manifest

ROOT = Path(__file__).parents[2] / "service" / "dashboard"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture
def client(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None)
    with TestClient(create_app(settings)) as c:
        yield c
    dispose_engines()


def test_nothing_comes_from_the_internet():
    for path in ROOT.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".svg"):
            text = path.read_text().replace(SVG_NAMESPACE, "")
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path


def test_the_page_and_everything_it_loads_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text)
    modules = {f"/dashboard/js/{m}" for p in (ROOT / "js").glob("*.js")
               for m in re.findall(r'from "\./([a-z]+\.js)"', p.read_text())}
    assert refs and modules
    for ref in [*refs, *modules]:
        assert client.get(ref).status_code == 200, ref
    assert client.get("/dashboard/js/app.js").headers["content-type"].startswith(
        ("text/javascript", "application/javascript"))


def test_the_form_offers_the_built_in_models(client):
    assert client.get("/dashboard/builtins.json").json() == {"models": builtin_model_names()}


def test_the_form_offers_the_export_formats_of_the_manifest(client):
    served = client.get("/dashboard/manifest.json").json()
    assert served == manifest()
    assert {"bitalloc", "compressed-tensors", "gptq"} <= {f["name"] for f in served["exports"]}
    assert (ROOT / "js" / "submit.js").read_text().count("/dashboard/manifest.json") == 1
