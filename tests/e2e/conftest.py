"""End-to-end runs on the full real shops in `../shared/data` (marker `shared_data`).

`make test` leaves them out (a newcomer's clone has no ../shared); `.ci/run` runs them with
`make test-shared` when the folder is there. Asked for without it, they fail: nothing is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the shared_data tests need the full real shops beside the checkout")
    return SHARED_DATA
