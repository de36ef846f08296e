"""Sharp tools shared by several stages, fenced off: nothing outside sampledrec imports this.

- :mod:`.cmac`: vectorised AES-256-CMAC over arrays (the draw's PRF), raw key bytes in;
- :mod:`.aead`: AES-256-GCM key wrapping and AES-256-CTR field sealing, raw key bytes in;
- :mod:`.files`: durable 0600 writes (atomic replace, exclusive create, fsync of the folder);
- :mod:`.locking`: ``flock`` with a bounded wait;
- :mod:`.postgres`: one psycopg connection (redacted DSN, retried transactions, versioned
  migrations under an advisory lock) for the stages' PostgreSQL backends.

Users call :class:`~sampledrec.Sampler`, :class:`~sampledrec.Vault` and the key stores, which
validate their inputs and then call these. An import-linter contract keeps this package private
to the library (``pyproject.toml``).
"""
