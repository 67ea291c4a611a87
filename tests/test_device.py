"""What a worker measures of its machine: free memory on each OS (the plan keeps within it)."""

import os

import pytest
import torch

from arceus.engine.device import available_from_vm_stat, free_memory_gb

# `vm_stat` on an Apple-silicon Mac (16 KiB pages), as macOS prints it.
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                3911.
Pages active:                            250934.
Pages inactive:                          246110.
Pages speculative:                         2161.
Pages throttled:                              0.
Pages wired down:                        147478.
Pages purgeable:                           6532.
"Translation faults":                 1434419683.
Pages copy-on-write:                   43213420.
Pages zero filled:                    701334262.
Pages reactivated:                     12717413.
Pages purged:                           3413218.
File-backed pages:                       105627.
Anonymous pages:                         393578.
Pages stored in compressor:              612066.
Pages occupied by compressor:            187377.
Decompressions:                        21234567.
Compressions:                          32345678.
Pageins:                               15432109.
Pageouts:                                 98765.
Swapins:                                 123456.
Swapouts:                                234567.
"""


def test_macos_free_memory_is_its_free_and_inactive_pages():
    assert available_from_vm_stat(VM_STAT) == 16384 * (3911 + 246110)  # 3.81 GiB
    intel = VM_STAT.replace("16384", "4096")  # an Intel Mac's 4 KiB pages
    assert available_from_vm_stat(intel) == 4096 * (3911 + 246110)


@pytest.mark.parametrize("text", ["", VM_STAT.replace("Pages inactive", "Pages idle"), VM_STAT.split("\n", 1)[1]])
def test_a_vm_stat_output_it_cannot_read_is_an_error_naming_what_it_lacks(text):
    with pytest.raises(ValueError, match="no page size, free and inactive pages"):
        available_from_vm_stat(text)


def test_this_machines_cpu_memory_is_measured():
    free = free_memory_gb(torch.device("cpu"))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert free is not None and 0 < free <= total
