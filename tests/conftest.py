import pytest
import torch

# CI has 2 cores and runs pytest with 2 xdist workers: one intra-op thread each avoids
# oversubscription (small float64 reads run several times faster this way).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# The long sweeps run first: with two workers (CI) they are shared out at the start and the
# short tests fill in after, instead of one worker finishing them alone at the end.
LONG_FIRST = ("tests/workflow/", "tests/zoo/test_declared.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_FIRST))  # stable
