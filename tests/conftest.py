import pytest
import torch

# CI has 2 cores and runs pytest with 2 xdist workers: one intra-op thread each avoids
# oversubscription (small float64 reads run several times faster this way).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread in every test, also after a test (or an in-process command's
    ``--threads``) changed it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


# The long sweeps, in two groups that xdist keeps on one worker each (`make test` runs
# `--dist loadgroup`): each group's session fixtures (the tiny sweep, the example training
# run) are built once, and the two workers share the long tests instead of one finishing
# them alone; the short tests fill in around them.
SWEEP_GROUPS = {"tests/workflow/": "sweeps-zoo", "tests/zoo/test_declared.py": "sweeps-declared"}


def pytest_collection_modifyitems(items):
    for item in items:
        for prefix, group in SWEEP_GROUPS.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))
