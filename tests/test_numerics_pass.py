""".ci/run's second numerics pass really computes otherwise (tests/conftest.py): a `numerics` test runs with the
run's thread count even in a module that asks for one thread (2 in the first pass, SANASR_TEST_THREADS=1 in the
second), and ATEN_CPU_CAPABILITY=default really switches ATen to its plain kernels."""

import os

import pytest
import torch

from tests.conftest import DEFAULT_THREADS, FORCED_THREADS

TORCH_THREADS = 1


@pytest.mark.numerics
def test_a_numerics_test_runs_with_the_runs_thread_count_and_kernels():
    assert torch.get_num_threads() == DEFAULT_THREADS
    if FORCED_THREADS is None:
        assert DEFAULT_THREADS == min(2, os.cpu_count() or 1)
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"


def test_other_tests_keep_their_modules_thread_count_unless_forced():
    assert torch.get_num_threads() == (FORCED_THREADS or TORCH_THREADS)


def test_the_forced_thread_count_is_sanasr_test_threads():
    forced = os.environ.get("SANASR_TEST_THREADS")
    assert FORCED_THREADS == (int(forced) if forced else None)
