"""The vault: recordings encrypted from the first byte, and who may read them (DESIGN.md §7).

:class:`Vault` opens a :class:`Recorder` for a call the sampler selected, seals it into the
container format with a per-recording data key wrapped by its expiry bucket's key, and lists,
reads and exports recordings for a :class:`Principal` whose roles allow it (every access is
logged). Storage is behind protocols: the :class:`Catalog` (SQLite by default, or PostgreSQL:
:class:`PostgresCatalog`) and the key store (:mod:`sampledrec.keys`).
"""

from .access import Principal
from .audio import AudioFormat
from .catalog import Catalog, RecordingRow, SqliteCatalog
from .notes import ReviewNote
from .postgres import PostgresCatalog
from .recorder import Recorder, Recording, Vault, WavRange

__all__ = [
    "AudioFormat",
    "Catalog",
    "PostgresCatalog",
    "Principal",
    "Recorder",
    "Recording",
    "RecordingRow",
    "ReviewNote",
    "SqliteCatalog",
    "Vault",
    "WavRange",
]
