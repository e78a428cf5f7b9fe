"""Sensitivity tests run tiny tensor ops by the thousand: on a shared 2-core box,
intra-op threads only wait on each other, so each test runs single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
