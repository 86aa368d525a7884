import os

import numpy as np
import pytest

# Tests are deterministic and small: one intra-op thread keeps timing noise and
# oversubscription (pytest + dask + torch on 2 cores) down.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
