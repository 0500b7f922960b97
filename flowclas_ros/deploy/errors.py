"""The errors of the deploy layer."""

from flowclas_ros.model.bundle import BundleError


class ArtefactError(BundleError):
    """A compiled artefact is missing, stale, corrupt, unsafe or cannot be built here."""


class UnsafeArtefactError(ArtefactError):
    """An artefact was altered or holds what our exporter never writes (a pickle, a foreign
    operator, external data): refused, and never skipped for another backend."""
