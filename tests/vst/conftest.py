import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """On the shared 2-core machine one torch thread per process runs these tests ~2.5x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
