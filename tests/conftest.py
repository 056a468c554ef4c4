import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots and other files a person can look at after the run (kept by CI as artifacts)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def smollm2():
    import nbinspect

    return nbinspect.load(device="cpu")


@pytest.fixture(scope="session")
def minilm():
    import nbinspect

    return nbinspect.load("minilm", device="cpu")
