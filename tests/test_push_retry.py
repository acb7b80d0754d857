"""The coordinator re-pushes the same Messages when the SuperLink refuses an object push."""

from __future__ import annotations

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectPushError

from server.messaging import push_messages


class FlakyGrid:
    """Refuses the first ``failures`` pushes the way Flower's HTTP grid does."""

    def __init__(self, failures: int) -> None:
        self.failures, self.pushed = failures, []

    def push_messages(self, messages: list) -> list:
        self.pushed.append(list(messages))
        if len(self.pushed) <= self.failures:
            raise ObjectPushError("obj", 1, "session")
        return [f"id-{m}" for m in messages] + [None]  # None: a message the SuperLink refused


def test_refused_push_is_repeated_with_the_same_messages() -> None:
    grid = FlakyGrid(failures=2)
    assert push_messages(grid, ["a", "b"], tries=3, wait=0.0) == {"id-a", "id-b"}
    assert grid.pushed == [["a", "b"]] * 3  # the very same Messages: same content ids


def test_push_gives_up_after_its_tries() -> None:
    grid = FlakyGrid(failures=5)
    with pytest.raises(ObjectPushError):
        push_messages(grid, ["a"], tries=2, wait=0.0)
    assert len(grid.pushed) == 2


def test_an_error_the_superlink_writes_is_charged_to_the_partner_asked() -> None:
    """A "Node Unavailable" reply comes from the SuperLink, not the dead partner's node: it is
    recorded once, under the name of the partner the message went to."""
    from types import SimpleNamespace as NS

    from server.messaging import stream_replies

    asked = NS(metadata=NS(dst_node_id=7, message_id="m7"))
    error = NS(metadata=NS(src_node_id=0, reply_to_message_id="m7"), has_error=lambda: True,
               error=NS(reason="Error: Node Unavailable", code=5))

    class Grid:
        def push_messages(self, messages):
            return ["m7"]

        def pull_messages(self, ids):
            return [error] if "m7" in ids else []

    failures: list = []
    assert list(stream_replies(Grid(), [asked], 5.0, {7: "org-z"}, failures, poll=0.0)) == []
    assert failures == [{"partner": "org-z", "reason": "its node is not connected: no heartbeat "
                         "(stopped, killed, or its machine or connection failed)"}]
