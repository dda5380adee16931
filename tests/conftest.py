import pytest
import torch

# CI has 2 cores and runs pytest with 2 xdist workers: one intra-op thread each avoids
# oversubscription (small float64 reads run several times faster this way).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
