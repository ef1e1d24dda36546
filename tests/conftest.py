import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    """A directory for the programs and libraries the tests compile."""
    return tmp_path_factory.mktemp("build")
