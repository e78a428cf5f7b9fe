"""Shared fixtures: one cache folder per test session, built-in models loaded once."""

import os
import tempfile

import pytest

# Trained models and sensitivity tables go to a cache that persists across runs
# unless the caller set one; tests never write into the working tree.
os.environ.setdefault("BITALLOC_CACHE", os.path.join(tempfile.gettempdir(), "bitalloc-test-cache"))


@pytest.fixture(scope="session")
def digits_bundle():
    from sensitivity.models import load_model

    return load_model("digits-cnn")


@pytest.fixture(scope="session")
def minilm_bundle():
    from sensitivity.models import load_model

    return load_model("minilm")
