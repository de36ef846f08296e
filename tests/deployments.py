"""A deployment on the real PostgreSQL and SeaweedFS, and its nodes, for the tests of several
nodes (test_nodes*.py, test_deployment_keys.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.deployment import Deployment
from sampledrec.store import s3_blobs_backend

from .postgres import PostgresServer
from .seaweedfs import SeaweedFS

#: When the nodes of these tests are made (simulated stores).
AT = "2030-03-05T10:00:00Z"


def new_deployment(
    folder: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
    *,
    policy: Path,
    **kw: Any,
) -> Deployment:
    """A deployment (its file in ``folder``) on a fresh schema and a fresh bucket prefix,
    with ``policy`` for its first nodes; ``kw`` go to :meth:`Deployment.init`."""
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{seaweedfs.bucket}/{seaweedfs.new_prefix('dep')}"
    return Deployment.init(
        folder / "deployment.json",
        name="test-dep",
        catalog_dsn=postgres.url(postgres.new_schema()),
        blobs=s3_blobs_backend(url, endpoint=seaweedfs.endpoint),
        policy=policy,
        **kw,
    )


def nodes(dep: Deployment, folder: Path, *names: str, at: str = AT) -> list[Store]:
    """Simulated node stores ``folder/NAME`` of ``dep``, made at ``at``."""
    return [
        Store.init_node(folder / n, dep, name=n, simulated=True, clock=FixedClock(at))
        for n in names
    ]
