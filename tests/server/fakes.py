"""A stand-in for Flower's Grid in server tests: each pushed message is answered by a function."""

from __future__ import annotations


class Grid:
    """Answers each pushed message with `answer(msg)` (the site on that node), all in one pull."""

    def __init__(self, answer):
        self.answer, self.pushed = answer, []

    def push_messages(self, messages):
        self.pushed += messages
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        out, self.pushed = [self.answer(m) for m in self.pushed], []
        return out
