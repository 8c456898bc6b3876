import platform

import pytest

from denoised_drs import cpu_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_thresholds_are_accepted_by_glibc():
    # glibc's mallopt answers 0 for a value out of range (e.g. an mmap threshold
    # above its 32 MiB maximum), so True means both settings are in force.
    assert cpu_memory.keep_freed_memory() is True
    assert cpu_memory.keep_freed_memory() is True


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_memory.platform, "system", lambda: "Darwin")
    assert cpu_memory.keep_freed_memory() is False
