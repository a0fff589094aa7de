"""Shared set-up of the model tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Model tests use tiny tensors: one thread is fastest, and on a busy 2-core machine the
    OpenMP barriers between two threads make every op far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
