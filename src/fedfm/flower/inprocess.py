"""A Flower Grid that runs a ClientApp in this process: one Context per virtual node.

For tests and debugging: the full fedfm-on-Flower path (codec, ClientApp, context.state memory,
FlowerClients, discovery) without Ray or a SuperLink, so a parity check over every algorithm
costs seconds. Messages are delivered in order, synchronously.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

FIRST_NODE_ID = 1001


def _ensure_task_identity() -> None:
    """Flower stamps new messages with the sender's (run, node, task) ids; outside a Flower
    runtime nobody has set them, so give this process the ids of a lone server task."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("run_id", "node_id", "task_id"):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, 1 if attr != "node_id" else 0)


class InProcessGrid(Grid):
    def __init__(self, app: ClientApp, num_nodes: int, run_config: dict | None = None):
        self.app = app
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=1, node_id=FIRST_NODE_ID + i,
                                       node_config={"partition-id": i, "num-partitions": num_nodes},
                                       state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(num_nodes)}
        self._run = None
        _ensure_task_identity()

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]
