"""Sensitivity tests run tiny tensor ops by the thousand: each runs single-threaded."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield
