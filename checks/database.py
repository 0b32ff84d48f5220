"""Database primary: can we connect, is there headroom, are sessions leaking, slow, blocked or lagging?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData


@pytest.mark.sev1
@pytest.mark.database
@pytest.mark.scenario("database-unreachable")
def check_database_accepts_connections(db, settings, expect):
    # The kind of failure is the condition observed, and it picks the scenario: only "too many
    # clients" is connection exhaustion; refused, timed out and unreachable are the primary
    # unreachable. Every kind makes the primary unavailable: SEV-1.
    attempt = db.attempt()
    expect(attempt.ok, target=f"connect to {attempt.target}", observed=attempt.describe(),
           threshold=f"a read-only session within the {settings.connect_s:g} s connect timeout",
           detail=_connect_advice(attempt.kind), condition=CONNECT_CONDITIONS.get(attempt.kind),
           evidence={"target": attempt.target, "kind": attempt.kind, "message": attempt.message,
                     "elapsed_s": round(attempt.elapsed_s, 3)})


@pytest.mark.sev1
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_connection_headroom_below_sev1(db, settings, expect):
    # At 95% new connections are about to fail: the primary is about to be unavailable.
    _headroom(db.activity(), settings.db_headroom_sev1, expect)


@pytest.mark.sev2
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_connection_headroom_below_sev2(db, settings, expect):
    _headroom(db.activity(), settings.db_headroom_sev2, expect)


@pytest.mark.sev3
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_no_idle_connection_leak(db, settings, expect):
    activity = db.activity()
    limit_s = settings.db_idle_max_s
    idle = activity.older_than(["idle"], limit_s)
    groups = activity.top_clients(idle, n=10)
    expect(len(idle) <= settings.db_idle_max_count,
           target=f"{activity.target} idle connections older than {_duration(limit_s)}",
           observed=f"{len(idle)} idle connection(s)", threshold=f"<= {settings.db_idle_max_count}",
           detail="by application_name@client_addr: " + _counts(groups),
           evidence=[b.row() for b in idle])


# SEV-3, not SEV-2: a session idle in a transaction holds a connection slot, a snapshot that
# stops vacuum, and maybe locks; by itself that is a limited degradation. When its locks hold
# other sessions up, check_no_blocking_locks fails at SEV-2 and names it as the blocker.
@pytest.mark.sev3
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_no_long_idle_in_transaction(db, settings, expect):
    activity = db.activity()
    limit_s = settings.db_idle_in_tx_max_s
    stuck = activity.older_than(["idle in transaction", "idle in transaction (aborted)"], limit_s)
    expect(not stuck, target=f"{activity.target} sessions idle in transaction longer than {_duration(limit_s)}",
           observed=f"{len(stuck)} session(s)", threshold="none",
           detail="\n".join(
               f"pid {b.pid} {b.client}: {b.state} for {b.state_age_s or 0:.0f} s "
               f"(transaction open {b.xact_age_s or 0:.0f} s), last query: {b.query}" for b in stuck[:10]),
           evidence=[b.row() for b in stuck])


# SEV-3: one slow query is a limited degradation; when it holds others up, the blocking-locks
# check reports SEV-2. Either way the verdict learns whether "kill long-running queries" applies.
@pytest.mark.sev3
@pytest.mark.database
@pytest.mark.scenario("high-latency")
def check_no_long_running_queries(db, settings, expect):
    activity = db.activity()
    limit_s = settings.db_long_query_s
    slow = activity.long_running(limit_s)
    expect.fact("long_running_queries", bool(slow))
    expect(not slow, target=f"{activity.target} active queries running longer than {_duration(limit_s)}",
           observed=f"{len(slow)} query(ies)" + (f", longest {slow[0].query_age_s or 0:.0f} s" if slow else ""),
           threshold=f"none over {limit_s:g} s",
           detail="\n".join(f"pid {b.pid} {b.client}: {b.query_age_s or 0:.1f} s, state {b.state}, "
                            f"query: {b.query}" for b in slow[:10]),
           evidence=[b.row() for b in slow])


@pytest.mark.sev2
@pytest.mark.database
@pytest.mark.scenario("high-latency")
def check_no_blocking_locks(db, settings, expect):
    activity = db.activity()
    limit_s = settings.db_lock_wait_s
    blocked = activity.blocked(limit_s)
    victims = {}
    for b in blocked:
        for pid in b.blocked_by:
            victims.setdefault(pid, []).append(b)
    holders = activity.lock_holders(blocked)
    expect.fact("lock_holder", holders)
    lines = []
    for pid, waiting in sorted(victims.items(), key=lambda kv: -len(kv[1])):
        blocker = activity.pid(pid)
        who = (f"{blocker.client}, {blocker.state}, transaction open {blocker.xact_age_s or 0:.0f} s, "
               f"query: {blocker.query}") if blocker else "gone since the snapshot"
        lines.append(f"pid {pid} ({who}) blocks {len(waiting)} session(s), the longest for "
                     f"{waiting[0].waiting_s:.1f} s: pids {', '.join(str(w.pid) for w in waiting[:10])}")
    lines += [f"  pid {b.pid} {b.client} waiting {b.waiting_s:.1f} s on {', '.join(map(str, b.blocked_by))}: "
              f"{b.query}" for b in blocked[:5]]
    expect(not blocked, target=f"{activity.target} sessions waiting on another session's lock",
           observed=f"{len(blocked)} blocked longer than {limit_s:g} s by {len(victims)} session(s)",
           threshold="none", detail="\n".join(lines),
           condition="lock_holder_found" if holders else None,
           evidence={"blocked": [b.row() for b in blocked],
                     "blockers": [activity.pid(p).row() for p in victims if activity.pid(p) is not None]})


@pytest.mark.sev2
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_pool_not_saturated(db_pool, expect):
    pool = db_pool.stats()
    expect.fact("database_overload", pool.saturated)
    expect(not pool.saturated, target=f"the application's database pool, per pod ({pool.source})",
           observed=pool.describe(), threshold=pool.threshold, evidence=pool.samples)


@pytest.mark.sev3
@pytest.mark.database
def check_replication_lag(db, settings, expect):
    lag = db.replication()
    if not lag.in_recovery:
        raise NoData("replica_url points at a server that is not in recovery (not a replica)", target=lag.target)
    limit = settings.replication_lag_s
    observed = lag.lag_s
    expect(observed is not None and observed <= limit, target=f"{lag.target} replay lag",
           observed="unknown (never replayed)" if observed is None else f"{observed:.1f} s",
           threshold=f"<= {limit:g} s", evidence=lag.row())


def _headroom(activity, ratio, expect):
    s = activity.settings
    clients = activity.clients
    used = len(clients)
    available = s.available
    share = used / available if available else float("inf")
    expect(share < ratio, target=f"{activity.target} connections in use",
           observed=f"{used} of {available} ({share:.0%})",
           threshold=f"< {ratio:.0%} of {available} ({s.describe()})",
           detail=f"by state: {_counts(activity.by_state().items())}\n"
                  f"top application_name@client_addr: {_counts(activity.top_clients())}",
           evidence=[b.row() for b in clients])


# What a failed connection attempt observed (labcheck.verdict.conditions names the scenario of each).
CONNECT_CONDITIONS = {
    "too many clients": "too_many_clients",
    "refused": "db_refusing_connections",
    "timed out": "db_connect_timeout",
    "unreachable": "db_unreachable",
}


def _connect_advice(kind):
    return {
        "too many clients": "too many clients: every connection slot is taken (connection exhaustion)",
        "refused": "refused: nothing listens on that address (server down or failing over?)",
        "timed out": "timed out: no answer within the connect timeout (network, security group, overload?)",
        "auth failed": "auth failed: the server rejected the credentials (rotated password? pg_hba?)",
        "database missing": "database missing: the server answered but the database does not exist",
        "unreachable": "unreachable: the address does not resolve or route",
    }.get(kind, "")


def _counts(pairs):
    return ", ".join(f"{k} {v}" for k, v in pairs) or "none"


def _duration(seconds):
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"
