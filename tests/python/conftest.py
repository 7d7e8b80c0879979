"""Shared fixtures of the Python tests: the moeforge binary under test and the source tree.

ctest sets MOEFORGE_BINARY and MOEFORGE_SOURCE_DIR; run by hand, point them at a build:
    MOEFORGE_BINARY=build/cpu-release/tools/cli/moeforge .venv/bin/python -m pytest tests/python
"""
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def source_dir() -> Path:
    return Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="session")
def moeforge_binary() -> Path:
    binary = os.environ.get("MOEFORGE_BINARY")
    if not binary:
        pytest.skip("MOEFORGE_BINARY is not set (ctest sets it to the built moeforge)")
    if not Path(binary).is_file():
        pytest.fail(f"MOEFORGE_BINARY={binary} does not exist")
    return Path(binary)


@pytest.fixture(scope="session")
def run_moeforge(moeforge_binary):
    """Runs `moeforge *args`; returns the CompletedProcess (text mode, stdout/stderr captured)."""

    def run(*args, check=True, **kwargs):
        result = subprocess.run([str(moeforge_binary), *map(str, args)], capture_output=True,
                                text=True, errors="replace", **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"moeforge {' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stderr}")
        return result

    return run
