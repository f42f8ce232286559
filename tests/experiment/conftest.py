import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny-model runs are dominated by thread synchronisation on a shared 2-core machine: use one
    torch thread in this folder's tests and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
