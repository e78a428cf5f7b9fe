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


@pytest.fixture
def single_thread():
    """Tiny tensor ops by the thousand: on a shared 2-core box intra-op threads only
    wait on each other, so such tests run single-threaded."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
