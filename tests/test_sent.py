"""Issue 33 item 13: `keep-sent` keeps every copy of what left a partner; a round sent again (a
resumed run re-sends a round) is kept beside the first, never over it (client.sent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from client.sent import keep_sent, read_sent, sent_copies, sent_path
from common import protocol as P
from common.wire.records import from_array_record
from tests.test_partner_policy import Partner, refusal


@pytest.fixture(autouse=True)
def task_identity():  # Message(reply_to=...) reads it, as in a real ClientApp process
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def test_a_round_sent_twice_keeps_both_copies(tmp_path: Path) -> None:
    first, second = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    assert keep_sent(tmp_path, "7", 2, first) == sent_path(tmp_path, "7", 2)
    assert keep_sent(tmp_path, "7", 2, second) == sent_path(tmp_path, "7", 2, copy=2)
    copies = sent_copies(tmp_path, "7", 2)
    assert [read_sent(p)["w"].tolist() for p in copies] == [[0, 0, 0], [1, 1, 1]]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in copies)
    assert not list((tmp_path / "sent").glob(".*"))  # no temporary file left


def test_a_re_sent_round_through_the_handlers_keeps_both_updates(tiny_bert: str,
                                                                 tmp_path: Path) -> None:
    """The same round trained and sent twice (a coordinator resuming it): two copies, each
    exactly what its reply carried."""
    partner = Partner(tiny_bert, tmp_path, {"keep-sent": True})
    replies = [partner.train(1)]
    partner.arrays = {k: v + 0.01 for k, v in partner.arrays.items()}  # resent, other weights
    replies.append(partner.train(1))
    assert not any(refusal(r) for r in replies)
    copies = sent_copies(partner.root, "1", 1)
    assert len(copies) == 2
    for reply, path in zip(replies, copies):
        sent = from_array_record(reply.content.array_records[P.ARRAYS])
        kept = read_sent(path)
        assert sorted(kept) == sorted(sent)
        assert all(np.array_equal(kept[k], sent[k]) for k in sent)
    first, second = (read_sent(p) for p in copies)
    assert not all(np.array_equal(first[k], second[k]) for k in first)  # two updates
