"""Exception hierarchy for the replay buffer: everything the outside world can get wrong lands here."""


class ReplayError(Exception):
    """Base class of every replay-buffer error."""


class WriterFencedError(ReplayError):
    """A newer writer opened the durable store; this writer may no longer commit."""


class CorruptChunkError(ReplayError):
    """A durable or scratch object failed its checksum (or is truncated, unparsable, out of range, stale); the
    message names the object and the manifest. `kind`: chunk, pack, page, manifest or writer; `problem`: what is
    wrong, in a few words (checksum mismatch, truncated, unparsable, invalid, stale, duplicate, missing)."""

    def __init__(self, message: str, *, key: str = "", manifest: str = "", kind: str = "chunk",
                 problem: str = "checksum mismatch"):
        super().__init__(message)
        self.key, self.manifest, self.kind, self.problem = key, manifest, kind, problem


class NoRestorableCommitError(ReplayError):
    """Every durable commit references a corrupt or missing chunk: no attempt can resume from this store as it is.
    Not a CorruptChunkError on purpose: a requeue would only find the same."""

    def __init__(self, message: str, *, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


class DurableStoreError(ReplayError):
    """The durable URL is missing, unwritable or unreadable."""


class ScratchError(ReplayError):
    """The scratch tier could not be written (disk full, permissions); the durable tier is untouched."""


class SchemaError(ReplayError, ValueError):
    """A step or a stored manifest does not match the buffer's schema."""
