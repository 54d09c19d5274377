"""SANA-SR: one-step real-world image super-resolution with a compact-latent LinearDiT.

The command-line tool is `sanasr` (see `sanasr --help`); the Python API is `SanaSRPipeline`:

    from PIL import Image
    from sanasr_cli import SanaSRPipeline

    pipe = SanaSRPipeline.from_pretrained("nano")  # a preset, or a model directory
    pipe(Image.open("examples/lq/cat.png")).images[0].save("cat_x4.png")

The library lives in the sub-packages: `models` (VAE, text encoder, restorer, presets, model directories),
`prompts` (taggers and the prompt rule of Eq. 12), `data` (image I/O), `pipeline` (upscaling), `training`
(losses).
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING

# bitsandbytes (a dependency of pyiqa) is never used by sanasr: no layer is quantized. diffusers, peft and transformers
# import it whenever it is installed (they ask importlib.util.find_spec), which costs seconds and, on a CPU, a hub
# lookup for a kernel and stray stderr lines. A None in sys.modules is Python's "not installed" (find_spec returns
# None, an import raises ImportError), so for this process they skip it. A program that uses bitsandbytes itself
# imports it before sanasr_cli (then it is left as it is; docs/python-api.md). Once diffusers, transformers or peft
# is imported it is too late: they recorded bitsandbytes as installed and would fail to import it later.
_DECIDES_BITSANDBYTES = ("diffusers", "transformers", "peft")
if "bitsandbytes" not in _sys.modules and not any(name in _sys.modules for name in _DECIDES_BITSANDBYTES):
    _sys.modules["bitsandbytes"] = None

# Exported lazily: importing torch and diffusers takes seconds, and `sanasr --help` must not pay for it.
_LAZY = {
    "SanaSRPipeline": "sanasr_cli.pipeline.sana_sr",
    "SanaSRPipelineOutput": "sanasr_cli.pipeline.sana_sr",
}
__all__ = ["SanaSRPipeline", "SanaSRPipelineOutput", "__version__"]

if TYPE_CHECKING:
    from sanasr_cli.pipeline.sana_sr import SanaSRPipeline, SanaSRPipelineOutput


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
