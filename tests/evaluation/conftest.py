from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread.

    The features, probes and models here are tiny: on a shared 2-core machine,
    OpenMP barriers cost far more than a second thread gains (a small L-BFGS fit
    runs 6x faster on one thread).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
