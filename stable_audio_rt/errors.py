"""The exceptions the library raises. CLIs turn them into one line and a non-zero exit."""


class StableAudioError(Exception):
    """Base class: every error this package raises on purpose."""


class ConfigError(StableAudioError):
    """A model configuration is inconsistent or unsupported."""


class CheckpointError(StableAudioError):
    """A checkpoint is missing, incomplete, corrupt or does not match its config."""


class ModelAccessError(CheckpointError):
    """A checkpoint could not be fetched: gated repo, no token, no network, unknown repo."""
