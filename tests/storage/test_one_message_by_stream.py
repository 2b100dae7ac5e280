"""The PostgreSQL log's one message when another process moved some of a group's streams
(issue 15, session 7): the streams that did not move are written in the same message,
numbered as the exact path numbers them, with their command ids; the appends of the
streams that moved fail by the log's rule. Real PostgreSQL (``ACTORLOG_TEST_POSTGRES``).

A group goes the one-message way when every append expects an exact version and the
appends of a stream follow one another; a log that just found a stream moved sends its
next groups that way by stream (``actorlog_guarded_streams``), others all or nothing and,
when something moved, the rest again by stream. The tests drive both through what another
writer does, and check what ``append_batch`` answers and what the log holds against the
rule written out on its own (``test_review6._model_outcomes``).
"""

from __future__ import annotations

import random
from typing import Any

from actorlog import ConcurrencyError
from actorlog.storage import ANY, Append, AppendResult
from tests.storage.test_review6 import _committed, _model_outcomes, _noticed, _observed
from tests.storage.test_review8 import _random_group
from tests.support import Postgres


def test_streams_that_did_not_move_commit_with_their_ids_in_the_rule_s_order(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    ours = postgres.log(schema, shared=True)
    other = postgres.log(schema, shared=True)
    rng = random.Random(1507)
    streams = [f"s{i}" for i in range(8)]
    versions = dict.fromkeys(streams, 0)  # the log's
    believed = dict(versions)  # ours: stale where the other writer appended since
    head = 0
    expected_log: list[tuple[str, int, str]] = []
    ids: list[tuple[Append, Any]] = []  # every append with an id, and its model outcome
    partly = 0  # groups in which some streams committed and some had moved
    for round_ in range(150):
        # Now and then the other writer moves some streams (not every round, so groups
        # go both ways: all or nothing after a quiet round, by stream after a move).
        for sid in rng.sample(streams, rng.choice((0, 0, 1, 1, 2, 3))):
            n = rng.randint(1, 2)
            events = tuple((f"other.{round_}.{sid}.{j}", b"\xc0") for j in range(n))
            _committed(other.append_batch([Append(sid, ANY, events)])[0])
            expected_log += [
                (sid, versions[sid] + j + 1, name) for j, (name, _) in enumerate(events)
            ]
            versions[sid] += n
            head += n
        group = _random_group(rng, believed, f"ours.{round_}")
        model, new_head = _model_outcomes(group, versions, head)
        outcomes, stored = ours.append_batch(group)
        assert [_observed(o) for o in outcomes] == model, round_
        kinds = {o[0] for a, o in zip(group, model, strict=True) if a.events}
        partly += kinds == {"ok", "conflict"}
        for append, outcome in zip(group, model, strict=True):
            if append.command_id is not None:
                ids.append((append, outcome))
            if outcome[0] == "ok":
                expected_log += [
                    (append.stream_id, outcome[2] + j, name)
                    for j, (name, _) in enumerate(append.events)
                ]
        assert [(e.stream_id, e.version, e.type) for e in stored] == expected_log[head:]
        assert [e.position for e in stored] == list(range(head + 1, new_head + 1))
        head = new_head
        believed = dict(versions)  # as an engine learns from its conflicts and follower
    assert partly >= 10, "groups seldom both committed and failed: the test proves little"
    log = ours.read_all(1, 100_000)
    assert [e.position for e in log] == list(range(1, head + 1))
    assert [(e.stream_id, e.version, e.type) for e in log] == expected_log
    # An id is recorded exactly when its append committed, with that append's result...
    for append, outcome in ids:
        assert append.command_id is not None
        found = ours.find_command(append.stream_id, append.command_id)
        if outcome[0] == "ok":
            assert found is not None, (append, outcome)
            assert _observed(found) == outcome, append
        else:
            assert found is None, (append, outcome)
    # ... and numbered with no gap (the count pruning's bound counts on it).
    seqs = [
        row[0] for row in postgres.execute(f'SELECT seq FROM "{schema}".command_ids ORDER BY seq')
    ]
    assert seqs == list(range(1, sum(o[0] == "ok" for _, o in ids) + 1))


def test_a_group_by_stream_wakes_other_processes_only_if_it_wrote(postgres: Postgres) -> None:
    schema = postgres.schema()
    ours = postgres.log(schema, shared=True)
    other = postgres.log(schema, shared=True)
    _committed(other.append_batch([Append("o", 0, (("T", b"\xc0"),))])[0])
    assert not _noticed(other, 0.05)  # listening now; its own commit is not news
    _committed(ours.append_batch([Append("a", 0, (("T", b"\xc0"),)), Append("b", 0, ())])[0])
    assert _noticed(other, 5)
    # "a" moves: our group on "a" and "b" finds it moved; "b" commits all the same.
    _committed(other.append_batch([Append("a", 1, (("T", b"\xc0"),))])[0])
    outcomes, stored = ours.append_batch(
        [Append("a", 1, (("T", b"\xc0"),)), Append("b", 0, (("T", b"\xc0"),))]
    )
    assert isinstance(outcomes[0], ConcurrencyError) and outcomes[0].actual == 2
    assert isinstance(outcomes[1], AppendResult)
    assert [(e.stream_id, e.version, e.position) for e in stored] == [("b", 1, 4)]
    assert _noticed(other, 5)
    # Sent by stream now (a stream moved last time): every stream moved, nothing written,
    # no notice; then a group that writes one stream of two is heard.
    _committed(
        other.append_batch([Append("a", 2, (("T", b"\xc0"),)), Append("b", 1, (("T", b"\xc0"),))])[
            0
        ]
    )
    outcomes, stored = ours.append_batch(
        [Append("a", 2, (("T", b"\xc0"),)), Append("b", 1, (("T", b"\xc0"),))]
    )
    assert stored == [] and all(isinstance(o, ConcurrencyError) for o in outcomes)
    assert not _noticed(other, 0.3)
    outcomes, stored = ours.append_batch(
        [Append("a", 2, (("T", b"\xc0"),)), Append("b", 2, (("T", b"\xc0"),))]
    )
    assert isinstance(outcomes[0], ConcurrencyError) and isinstance(outcomes[1], AppendResult)
    assert [(e.stream_id, e.version, e.position) for e in stored] == [("b", 3, 7)]
    assert _noticed(other, 5)
    assert [(e.stream_id, e.version) for e in ours.read_all()] == [
        ("o", 1),
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("a", 3),
        ("b", 2),
        ("b", 3),
    ]
