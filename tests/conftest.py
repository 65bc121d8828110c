import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep dataset caches of the test session out of the user's home."""
    os.environ["AUGLENS_CACHE"] = str(tmp_path_factory.mktemp("auglens-cache"))


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)
