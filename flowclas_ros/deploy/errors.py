"""The error of the deploy layer."""

from flowclas_ros.model.bundle import BundleError


class ArtefactError(BundleError):
    """A compiled artefact is missing, stale, corrupt, unsafe or cannot be built here."""
