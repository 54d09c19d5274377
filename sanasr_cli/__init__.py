"""SANA-SR: one-step real-world image super-resolution with a compact-latent LinearDiT.

The command-line tool is `sanasr` (see `sanasr --help`); the library lives in the sub-packages:
`models` (VAE, text encoder, restorer, presets, model directories), `prompts` (taggers and the
prompt rule of Eq. 12), `data` (image I/O), `pipeline` (upscaling), `training` (losses).
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (pulled in by pyiqa) warns at import about an optional CPU kernel package; it is irrelevant here.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
