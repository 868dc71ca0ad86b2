"""`python -m llama_cpp.server`, with llama.cpp's extra weight buffers off on a CPU that advertises AMX.

llama.cpp built from source for the machine it is on (pip's default) puts weights in AMX tile
buffers when the CPU advertises AMX. On a virtual machine that lists the AMX flags, every
evaluation of more than one token then ended in a segmentation fault (llama-cpp-python 0.3.36,
an Intel Xeon VM with amx_tile, amx_int8, amx_bf16): the embedded model answered nothing. With
`use_extra_bufts` off the weights stay in plain CPU buffers and generation works; elsewhere
nothing changes.
"""

import runpy
from pathlib import Path

AMX_FLAG = "amx_tile"


def cpu_advertises_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU's flags (Linux's /proc/cpuinfo) list AMX tiles."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no such file, nothing to work around
        return False
    return any(line.startswith("flags") and AMX_FLAG in line.split() for line in text.splitlines())


def without_extra_buffers() -> None:
    """Make every model llama-cpp-python loads in this process keep its weights in plain CPU buffers."""
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params

    def plain_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = plain_buffers  # `Llama` reads it from the module at load time


if __name__ == "__main__":
    if cpu_advertises_amx():
        without_extra_buffers()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
