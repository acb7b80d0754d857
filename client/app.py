"""The partner's Flower ClientApp: the module Flower loads for every Message.

It imports Flower and the partner's code check (client.pinning) and nothing else of the App, so
the check runs before any other module of the App can: only an approved App (or any App, at a
partner that pins no code) goes on to client.handlers, which answers the Message."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import pinning

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _answer(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context)


def _answer(msg: Message, context: Context) -> Message:
    refused = pinning.refusal(msg, context)
    if refused is not None:
        return refused
    from client import handlers  # only now: the rest of the App is approved, or not pinned

    return handlers.answer(msg, context)
