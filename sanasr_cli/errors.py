"""Named exceptions. The CLI turns each into one clear line (no traceback) and an exit code."""


class SanaSRError(Exception):
    """Base class for errors a user can act on; the message says what to do."""


class MissingWeightsError(SanaSRError):
    """A pretrained component could not be found locally or downloaded."""

    def __init__(self, component: str, looked_in: str, how_to_fix: str, cause: str = ""):
        self.component = component
        self.looked_in = looked_in
        msg = f"missing weights for '{component}': looked in {looked_in}. {how_to_fix}"
        if cause:
            msg += f" (cause: {cause})"
        super().__init__(msg)


class LaunchError(SanaSRError):
    """A launch of several processes is unusable: they did not form one process group, so each would run the
    whole job alone (a usage error, exit 2)."""


class ModelDirError(SanaSRError):
    """A model directory is missing, incomplete or of an unknown format."""


class ImageReadError(SanaSRError):
    """An input file is not a readable image (or is refused, e.g. too large)."""


class ImageWriteError(SanaSRError):
    """An output could not be written."""


class DatasetError(SanaSRError):
    """A training / benchmark data set cannot be built (no usable images, unmatched pairs, bad sizes)."""


class PairedDataError(DatasetError):
    """LQ and HQ folders do not match up (missing partners, duplicate stems, wrong size ratio)."""


class TaggerUnavailableError(SanaSRError):
    """A prompt tagger cannot be built: its package, weights or vocabulary is missing (the message says which)."""


class PromptRuleError(SanaSRError, ValueError):
    """A prompt-rule override cannot apply: an unknown tagger, or an option of another tagger (the message names
    it). The CLI prints it as one line with exit 2; the Python API raises it (it is a ValueError)."""


class UnsafeOutputError(SanaSRError):
    """A write was refused because it could replace or delete something sanasr did not write, or land outside
    the output folder (the message names the path)."""


class NonFiniteOutputError(SanaSRError):
    """The model produced NaN or infinite values for an input: nothing is written for it (a NaN would be
    written as a black image)."""
