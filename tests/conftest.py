from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
# The two largest fixtures (weights of 2M parameters each) are read from the reference beside the checkout.
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

TINY_MQVAE = dict(resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8],
                  z_channels=64, keep_ratio=0.25, codebook_size=64, codebook_dim=16, demask_layers=2)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_folder(tmp_path_factory):
    """mvq's caches (fingerprints, listings of read-only folders) go to a folder of the test session's own."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread avoids waiting on busy cores for parallel regions that cannot pay off."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_path(name: str) -> Path:
    """A file of the reference fixtures: tests/fixtures/reference, else the reference beside the checkout."""
    for folder in (REFERENCE, SHARED_REFERENCE):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"reference fixture {name} is in neither {REFERENCE} nor {SHARED_REFERENCE}")


# `make test-fast` runs `-m "not slow"`; a test slower than this belongs under the `slow` marker.
SLOW_TEST_SECONDS = 5.0


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name the unmarked tests that took longer than SLOW_TEST_SECONDS, so the fast subset stays fast."""
    slow = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when == "call" and report.duration > SLOW_TEST_SECONDS and "slow" not in report.keywords:
            slow.append(f"{report.duration:5.1f}s {report.nodeid}")
    if slow:
        terminalreporter.section(f"tests over {SLOW_TEST_SECONDS:.0f} s without @pytest.mark.slow")
        for line in sorted(slow, reverse=True):
            terminalreporter.write_line(line)
