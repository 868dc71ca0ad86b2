"""How many CPU threads the embedded model gets: one per physical core, one for a small model's answers."""

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sysfs: Path = SYSFS_CPU) -> int:
    """How many physical cores the logical `cpus` belong to: hardware threads of one core count once.

    Read from Linux's CPU topology (`cpuN/topology/{physical_package_id,core_id}`); a CPU whose
    topology cannot be read counts as a core of its own.
    """
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(
                (
                    (topology / "physical_package_id").read_text().strip(),
                    (topology / "core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """One thread per physical core this process may use (llama.cpp's advice): a second hardware
    thread of a core adds nothing to matrix work, and more threads than cores collapse."""
    return physical_cores(allowed_cpus())


SMALL_MODEL_BYTES = 1 << 30  # under ~1B parameters at 8 bits


def default_generation_threads(model: Path) -> int:
    """Threads for making answer tokens: one for a small model, else one per physical core.

    A token of a small model is little work, and the threads meet at a barrier after every
    layer: on this project's 2-core machine SmolLM2-135M made answers much faster
    on one thread than on two (while two threads processed its prompts faster than one).
    """
    try:
        small = model.stat().st_size < SMALL_MODEL_BYTES
    except OSError:
        small = False
    return 1 if small else default_threads()
