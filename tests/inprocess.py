"""A Grid whose clients run in this process: Flower's Grid contract, without its engine.

Each node has its own ``Context`` (its state survives between messages, as on a
SuperNode); a ClientApp exception becomes an error reply, as Flower sends one. For tests
of the run itself (``server.run.Run``): fast, and deterministic to the byte. The real
engines are tested end to end elsewhere (tests marked e2e).
"""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict

from clients.client_app import app as client_app


class InProcessGrid:
    """``clients`` nodes with ids ``100 + partition``; ``drop(message)`` returning True
    loses that message's reply (a node that never answers)."""

    def __init__(self, clients: int, drop=None):
        self.contexts = {100 + c: Context(run_id=1, node_id=100 + c, node_config={"partition-id": c, "num-partitions": clients},
                                          state=RecordDict(), run_config={}) for c in range(clients)}
        self.drop = drop or (lambda message: False)
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            if self.drop(message):
                continue
            replies.append(self._answer(message))
        return replies

    def _answer(self, message: Message) -> Message:
        try:
            reply = client_app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # what Flower does with a ClientApp that raises
            reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
        return reply

    # push and pull, as a deployment's Grid (server.polling.PollingGrid uses them)
    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            self.sent.append(message)
            message.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            ids.append(message.metadata.message_id)
            if not self.drop(message):
                self._waiting = {**getattr(self, "_waiting", {}), ids[-1]: self._answer(message)}
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        waiting = getattr(self, "_waiting", {})
        return [waiting.pop(i) for i in list(message_ids) if i in waiting]
