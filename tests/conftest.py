import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (restored afterwards): the reward-model tests are many tiny forwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen():
    """A seeded CPU generator; each test gets a fresh one."""
    return torch.Generator().manual_seed(0)


WORLD_RES = 16  # the toy world's resolution in the world tests (fast, still above the native 8 px)


@pytest.fixture(scope="session")
def splits():
    """The toy world's data splits at 16 px (built once per test session)."""
    from grpo_guard.world.data import make_splits

    return make_splits(WORLD_RES, seed=0)


@pytest.fixture(scope="session")
def gold(splits):
    """The gold evaluator trained on the 16 px gold split (once per test session)."""
    from grpo_guard.world.gold import GoldConfig, train_gold

    return train_gold(GoldConfig(resolution=WORLD_RES), splits, verbose=False)
