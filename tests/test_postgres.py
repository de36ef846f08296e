"""The PostgreSQL backends beyond the contract suite: what a deployment of several nodes relies
on (processes deciding and counting at once, migrations run once), what an operator sees (a
store on PostgreSQL from the CLI; a DSN's password never shown), against a real server
(tests/postgres.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store
from sampledrec.cli.app import main
from sampledrec.errors import StoreError
from sampledrec.sampling.caps import CapRequest, cap_periods
from sampledrec.sampling.postgres import PostgresCapLedger, PostgresDecidedCalls
from sampledrec.vault.postgres import PostgresCatalog

from .postgres import PostgresServer, start_postgres
from .recording import PCM, RECORD_REGULATED
from .test_backends import MONDAY, row
from .together import run_together

SECRET = "S3cret-pw-never-shown"


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A DSN whose tables go to a new, empty schema."""
    return postgres.fresh_dsn()


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg  # here: without it, the postgres fixture skips (or fails in CI) and says why

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description is not None else []


def cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@contextlib.contextmanager
def closing_all(*handles: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.close()


# --------------------------------------------------------------------------------------------
# The server the tests need


@pytest.mark.parametrize("ci", [None, "true"])
def test_without_postgresql_the_tests_skip_locally_and_fail_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    monkeypatch.setenv("SAMPLEDREC_PG_BINDIR", str(tmp_path))  # no initdb there
    monkeypatch.delenv("SAMPLEDREC_REQUIRE_POSTGRES", raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.skip.Exception if ci is None else pytest.fail.Exception
    with pytest.raises(expected, match="is not installed"):
        start_postgres(tmp_path)


# --------------------------------------------------------------------------------------------
# Nodes at once

DECIDE_WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from sampledrec.sampling.decided import FirstDecision
    from sampledrec.sampling.postgres import PostgresDecidedCalls

    dsn, me, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    index = PostgresDecidedCalls(dsn)
    calls = [b"\\x01" + i.to_bytes(16, "big") for i in range(200)]
    mine = [
        FirstDecision("2027-05-22", c, "sampled", f"rule-{me}", "quality", "0.05", "ab" * 32,
                      1 << 50, None, datetime(2027, 5, 22, 9, tzinfo=UTC))
        for c in calls
    ]
    order = list(range(200))
    random.Random(me).shuffle(order)
    while not go.exists():
        time.sleep(0.005)
    answers = {}
    k = 0
    while k < len(order):  # one by one, and batches of up to 7, in this process's own order
        size = 1 + (k // 11) % 7 if me == "b" else 1
        batch = order[k : k + size]
        for i, got in zip(batch, index.remember([mine[i] for i in batch])):
            answers[i] = None if got is None else got.rule
        k += size
    print(json.dumps([answers[i] for i in range(200)]))
    """
)


def test_two_processes_deciding_the_same_calls_get_one_first_decision(
    dsn: str, tmp_path: Path
) -> None:
    PostgresDecidedCalls(dsn).close()  # the tables, made before the race
    go = tmp_path / "go"
    outs = run_together(DECIDE_WORKER, [[dsn, "a", str(go)], [dsn, "b", str(go)]], go)
    a, b = (json.loads(out) for out in outs)
    index = PostgresDecidedCalls(dsn)
    with closing_all(index):
        for i in range(200):
            assert [a[i], b[i]].count(None) == 1, i  # exactly one process decided it first
            winner = "rule-a" if a[i] is None else "rule-b"
            assert a[i] in (None, winner) and b[i] in (None, winner), i  # the other got that
            first = index.get("2027-05-22", b"\x01" + i.to_bytes(16, "big"))
            assert first is not None and first.rule == winner
    assert query(dsn, "SELECT count(*) FROM decided_calls") == [(200,)]


CAPS_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from sampledrec.sampling.caps import CapRequest, cap_periods
    from sampledrec.sampling.postgres import PostgresCapLedger

    dsn, me, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    ledger = PostgresCapLedger(dsn, agent_key=b"k" * 32)
    at = datetime(2026, 11, 16, 9, tzinfo=UTC)

    def req(call):
        return CapRequest("2026-11-16", call, "sales", "alice", cap_periods(at, 7, 9))

    own = [req(b"own-%d-%d" % (me, i)) for i in range(30)]
    shared = [req(b"shared-%d" % i) for i in range(10)]  # every process asks about these
    reqs = [r for pair in zip(own, shared * 3) for r in pair]
    while not go.exists():
        time.sleep(0.005)
    answers = []
    for k in range(0, len(reqs), 1 + me):  # batches of 1, 2, 3, 4
        answers.extend(ledger.decide(reqs[k : k + 1 + me]))
    shared_answers = {r.call.decode(): a for r, a in zip(reqs, answers) if r in shared}
    own_sampled = sum(a == "sampled" for r, a in zip(reqs, answers) if r in own)
    print(json.dumps({"shared": shared_answers, "own_sampled": own_sampled}))
    """
)


def test_processes_counting_one_agent_never_exceed_its_cap(dsn: str, tmp_path: Path) -> None:
    PostgresCapLedger(dsn).close()
    go = tmp_path / "go"
    outs = [json.loads(out) for out in run_together(
        CAPS_WORKER, [[dsn, str(k), str(go)] for k in range(4)], go)]  # fmt: skip
    shared = outs[0]["shared"]
    assert all(out["shared"] == shared for out in outs)  # one answer per call, in every process
    sampled = sum(out["own_sampled"] for out in outs) + list(shared.values()).count("sampled")
    assert sampled == 7  # the day's cap: never more, and reached (120 + 10 calls asked)
    assert query(dsn, "SELECT period, count FROM cap_counts ORDER BY period") == [
        ("D2026-11-16", 7),
        ("W2026-47", 7),
    ]
    assert query(dsn, "SELECT count(*) FROM capped_calls") == [(130,)]


MIGRATE_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sampledrec.sampling.postgres import PostgresCapLedger, PostgresDecidedCalls
    from sampledrec.vault.postgres import PostgresCatalog

    dsn, go = sys.argv[1], Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    for backend in (PostgresCatalog, PostgresCapLedger, PostgresDecidedCalls):
        backend(dsn).close()
    print("done")
    """
)


def test_nodes_starting_at_once_migrate_once(dsn: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    assert run_together(MIGRATE_WORKER, [[dsn, str(go)]] * 4, go) == ["done\n"] * 4
    assert query(
        dsn, "SELECT component, version FROM schema_version ORDER BY component, version"
    ) == [("caps", 1), ("catalog", 1), ("catalog", 2), ("catalog", 3), ("decided", 1)]


# --------------------------------------------------------------------------------------------
# Migrations


def test_migrations_are_recorded_and_not_applied_again(dsn: str) -> None:
    catalog = PostgresCatalog(dsn)
    catalog.add(row("rec-1"))
    catalog.close()
    before = query(
        dsn, "SELECT component, version, summary, applied_at FROM schema_version ORDER BY version"
    )
    assert [(c, v) for c, v, _, _ in before] == [("catalog", 1), ("catalog", 2), ("catalog", 3)]
    assert "recordings" in before[0][2] and "notes" in before[1][2] and "node" in before[2][2]
    again = PostgresCatalog(dsn)
    with closing_all(again):
        assert again.get("rec-1") == row("rec-1")
    assert query(
        dsn, "SELECT component, version, summary, applied_at FROM schema_version ORDER BY version"
    ) == (before)


def test_a_catalog_of_version_1_gains_the_notes_table(dsn: str) -> None:
    from sampledrec._hazmat.postgres import PgConnection
    from sampledrec.vault.catalog import SealedNote
    from sampledrec.vault.postgres import MIGRATIONS

    # The catalog as an earlier sampledrec left it (version 1, no notes table).
    PgConnection(dsn, what="the catalog", component="catalog", migrations=MIGRATIONS[:1]).close()
    assert query(dsn, "SELECT to_regclass('notes')") == [(None,)]
    catalog = PostgresCatalog(dsn)
    with closing_all(catalog):
        note = SealedNote("note-1", "rec-1", 5, b"sealed")
        catalog.add_note(note)
        assert catalog.notes_of("rec-1") == [note]
    versions = query(dsn, "SELECT version FROM schema_version WHERE component = 'catalog'")
    assert sorted(v for (v,) in versions) == [1, 2, 3]


def test_a_catalog_of_version_2_gains_the_node_column(dsn: str) -> None:
    from sampledrec._hazmat.postgres import PgConnection
    from sampledrec.vault.postgres import MIGRATIONS

    # The catalog as the previous sampledrec left it (version 2: rows did not name a node).
    PgConnection(dsn, what="the catalog", component="catalog", migrations=MIGRATIONS[:2]).close()
    old = PgConnection(dsn, what="the catalog", component="catalog", migrations=MIGRATIONS[:2])
    with closing_all(old):
        old.run(
            lambda conn: conn.execute(
                "INSERT INTO recordings (recording_id, rule, purpose, policy_version, epoch_id, "
                "decision_index, started_at, expires_at_sealed, expires_at, bucket, "
                "audio_format, file, status) VALUES ('rec-old', 'r', 'quality', 'v', "
                "'2027-05-22', 0, 1, 2, 2, 'bucket-2027-05-22', 'pcm16/8000/1', "
                "'bucket-2027-05-22/rec-old.sdr', 'sealed')"
            )
        )
    catalog = PostgresCatalog(dsn)
    with closing_all(catalog):
        before = catalog.get("rec-old")
        assert before is not None and before.node is None
        catalog.add(dataclasses.replace(row("rec-new"), node="node-a"))
        after = catalog.get("rec-new")
        assert after is not None and after.node == "node-a"
    versions = query(dsn, "SELECT version FROM schema_version WHERE component = 'catalog'")
    assert sorted(v for (v,) in versions) == [1, 2, 3]


def test_a_schema_newer_than_this_version_is_refused(dsn: str) -> None:
    PostgresDecidedCalls(dsn).close()
    query(dsn, "INSERT INTO schema_version (component, version, summary) VALUES ('decided', 2, "
               "'from a later sampledrec')")  # fmt: skip
    with pytest.raises(StoreError, match=r"version 2, newer than this sampledrec knows \(1\)"):
        PostgresDecidedCalls(dsn)
    PostgresCatalog(dsn).close()  # the other components are not concerned


# --------------------------------------------------------------------------------------------
# What only the PostgreSQL ledgers do


def test_ledger_keeps_agents_as_pseudonyms_and_prunes_old_days(dsn: str) -> None:
    def req(call: bytes) -> CapRequest:
        return CapRequest("2026-11-16", call, "sales", "alice.martin", cap_periods(MONDAY, 1, 5))

    ledger = PostgresCapLedger(dsn, agent_key=b"k" * 32)
    with closing_all(ledger):
        assert ledger.decide([req(b"1"), req(b"2")]) == ["sampled", "cap_reached"]
    agents = query(dsn, "SELECT DISTINCT agent FROM cap_counts")
    assert len(agents) == 1 and "alice" not in agents[0][0] and len(agents[0][0]) == 32
    later = PostgresCapLedger(dsn, now=MONDAY + timedelta(days=30), agent_key=b"k" * 32)
    with closing_all(later):  # counts and calls older than 15 days are dropped
        assert query(dsn, "SELECT count(*) FROM cap_counts") == [(0,)]
        assert later.decide([req(b"2")]) == ["sampled"]


def test_a_connection_dropped_by_the_server_is_opened_again(
    postgres: PostgresServer, dsn: str
) -> None:
    catalog = PostgresCatalog(f"{dsn} application_name=sampledrec-dropped")
    with closing_all(catalog):
        catalog.add(row("rec-1"))
        query(
            postgres.dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            "sampledrec-dropped",
        )
        with contextlib.suppress(StoreError):  # the call that finds it dropped may fail
            catalog.get("rec-1")
        assert catalog.get("rec-1") == row("rec-1")  # the next one reconnects


# --------------------------------------------------------------------------------------------
# A DSN's password is never shown


def test_a_password_never_shows_in_repr_or_errors(postgres: PostgresServer, dsn: str) -> None:
    with_password = f"{dsn} password={SECRET}"  # trust authentication ignores it
    for backend in (PostgresCatalog, PostgresCapLedger, PostgresDecidedCalls):
        handle = backend(with_password)
        with closing_all(handle):
            assert SECRET not in repr(handle) and "password=***" in repr(handle)
    unreachable = [
        f"postgresql://rec:{SECRET}@127.0.0.1:1/sampledrec",
        f"host=127.0.0.1 port=1 user=rec password='{SECRET}' dbname=sampledrec",
        f"postgresql://rec@127.0.0.1:1/sampledrec?password={SECRET}",
        f"not a DSN password={SECRET}",
    ]
    for given in unreachable:
        with pytest.raises(StoreError) as caught:
            PostgresCatalog(given)
        assert SECRET not in str(caught.value), given
        assert "***" in str(caught.value) or "cannot be parsed" in str(caught.value), given


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://rec:s3cret@db/sampledrec?sslmode=require",
         "postgresql://rec:***@db/sampledrec?sslmode=require"),
        ("postgres://rec@h1:5432,h2:5433/db?password=p%40ss&x=1",
         "postgres://rec@h1:5432,h2:5433/db?password=***&x=1"),
        ("host=db user=rec password='it s\\'3cret' dbname=x",
         "host=db user=rec password=*** dbname=x"),
        ("host=db PASSWORD = abc", "host=db PASSWORD = ***"),
        ("postgresql:///sampledrec?host=/var/run/postgresql", None),
        ("postgresql://rec@db.example:5432/sampledrec?options=-csearch_path%3Dnode1", None),
        ("host=/var/run/postgresql dbname=sampledrec user=rec", None),
    ],
)  # fmt: skip
def test_dsns_are_shown_without_their_password(dsn: str, shown: str | None) -> None:
    from sampledrec._hazmat.postgres import dsn_has_password, redact_dsn

    assert redact_dsn(dsn) == (shown or dsn)  # a DSN without a password is shown as it is
    assert dsn_has_password(dsn) is (shown is not None)


def test_init_refuses_a_dsn_with_a_password(
    postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.url(postgres.new_schema()).replace("sampledrec@", f"sampledrec:{SECRET}@")
    code, out = cli("init", tmp_path / "s", "--catalog", url)
    err = capsys.readouterr().err
    assert code == 2 and "PGPASSWORD" in err  # a usage error
    assert SECRET not in out + err and "sampledrec:***@" in err
    assert not (tmp_path / "s").exists()
    code, out = cli("init", tmp_path / "s", "--catalog", "postgresql://rec@127.0.0.1:1/none")
    err = capsys.readouterr().err
    assert code == 3 and "127.0.0.1" in err  # unreachable: the store could not be used
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------
# A store on PostgreSQL


def test_a_store_on_postgresql_decides_records_and_lists(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    schema = postgres.new_schema()
    url = postgres.url(schema)
    (tmp_path / "p.toml").write_text(RECORD_REGULATED)
    store = tmp_path / "s"
    code, out = cli("init", store, "--policy", tmp_path / "p.toml", "--catalog", url, "--json")
    assert code == 0, out
    assert json.loads(out)["catalog_dsn"] == url
    assert Store.open(store).backends["catalog"] == {"kind": "postgresql", "dsn": url}

    code, out = cli("decide", "--store", store, "--call-ref", "pg-call-1", "--attr",
                    "queue=regulated", "--json")  # fmt: skip
    assert code == 0, out
    decided = json.loads(out)
    assert decided["record"] is True and decided["reason"] == "sampled"
    from sampledrec.vault.audio import encode_wav, synthetic_speech

    wav = tmp_path / "call.wav"
    wav.write_bytes(encode_wav(PCM, synthetic_speech(0.5, seed=3)))
    code, out = cli("record", "--store", store, "--call-ref", "pg-call-1", "--attr",
                    "queue=regulated", "--audio", wav, "--json")  # fmt: skip
    assert code == 0, out
    recorded = json.loads(out)
    assert recorded["recorded"] is True and recorded["repeat"] is True  # decided once, above
    rid = recorded["recording"]["id"]

    code, out = cli("recordings", "list", "--store", store, "--json")
    assert code == 0, out
    assert [r["id"] for r in json.loads(out)["recordings"]] == [rid]
    code, out = cli("recordings", "list", "--store", store)
    assert code == 0 and rid in out

    # Everything shared is in the database, nothing in the store's folder.
    in_schema = f"{postgres.dsn} options='-c search_path={schema}'"
    assert query(in_schema, "SELECT recording_id, status FROM recordings") == [(rid, "sealed")]
    assert query(in_schema, "SELECT count(*) FROM decided_calls") == [(1,)]
    assert not {"catalog.sqlite", "caps.sqlite", "decided.sqlite"} & {
        p.name for p in store.iterdir()
    }
