"""Every error a user of recycle-export can cause, in one place.

The CLI catches `RecycleExportError` once and prints it as one `Error: ...` line; anything
else is a bug and keeps its traceback. This module is stdlib-only so that every package
(the exporter, the engines and the torch-free runtime) can raise the same errors.
"""


class RecycleExportError(Exception):
    """Base class of every error a user can cause (bad input, bad files, bad options)."""


class ConfigError(RecycleExportError):
    """Raised when a model configuration field is missing or holds an invalid value."""


class CheckpointError(RecycleExportError):
    """Raised when a checkpoint cannot be loaded: missing, unexpected, mis-shaped or
    truncated tensors, or a file format we refuse (pickled weights)."""


class GGUFError(RecycleExportError):
    """Raised when a GGUF file cannot be converted (other architecture, missing metadata,
    unsupported tokenizer or tensor type)."""


class SamplingError(RecycleExportError):
    """Raised when sampling options are invalid (negative temperature, top-p outside (0, 1])."""


class GenerationError(RecycleExportError):
    """Raised when a generation request is invalid: empty prompt, prompt longer than the
    maximum sequence length, token ids outside the vocabulary, unknown strategy."""


class TaskSetError(GenerationError):
    """Raised when a task set of benchmark prompts cannot be used: an unknown name, a missing
    file, a line that is not a valid task (the message names the file, line and field), or a
    --kinds / --per-kind selection that leaves nothing to run."""


class ArtifactError(RecycleExportError):
    """Raised when exported artifacts are missing, incomplete, changed since export, or
    written by an incompatible version; the message says what to re-run."""


class ValidationError(RecycleExportError):
    """Raised when an exported graph disagrees with the PyTorch model beyond tolerance."""


class TargetError(RecycleExportError):
    """Raised for an unknown build target or a precision its part does not support."""


class DeviceError(RecycleExportError):
    """Raised when a GPU or its libraries fail at run time: cuda-python missing, no such
    GPU, a CUDA call returning an error, a TensorRT execution failing while decoding."""


class EngineBuildError(RecycleExportError):
    """Raised when an engine build fails: a missing library or device, a parser or builder
    error (reported in full), or a graph the chosen precision cannot use."""


class ServerError(RecycleExportError):
    """Raised when `cli.py serve` cannot start: an option out of range, an address it cannot
    listen on, or an export without the tokenizer that text requests need."""
