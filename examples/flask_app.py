"""A Flask app on ``BlockingKernel``: one agent per poll, called from sync views.

``BlockingKernel`` runs the kernel and its agents on one background event-loop thread;
every call from a Flask worker thread is handed to that loop and blocks until the
answer comes. Each poll is an agent, so votes arriving on many threads at once are
counted one at a time: no lock, no lost vote.

Run it (``pip install "kerna[examples]"``, from the repository root)::

    python -m examples.flask_app
    curl -X POST localhost:5000/polls/lunch -H 'content-type: application/json' \\
         -d '{"choice": "soup"}'
    curl localhost:5000/polls/lunch
"""

from typing import Annotated

import msgspec
from flask import Flask, Response, request

from kerna import Agent, BlockingKernel, Message, handler


class Vote(Message, tag="poll.vote"):
    choice: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class GetTally(Message, tag="poll.get"):
    pass


class Tally(Message, tag="poll.tally"):
    poll: str
    votes: dict[str, int]


class Poll(Agent):
    """In memory for the example; ``state=`` makes it durable (see durable_counter.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.votes: dict[str, int] = {}

    @handler
    async def vote(self, msg: Vote) -> Tally:
        self.votes[msg.choice] = self.votes.get(msg.choice, 0) + 1
        return self.tally()

    @handler
    async def get(self, msg: GetTally) -> Tally:
        return self.tally()

    def tally(self) -> Tally:
        return Tally(poll=self.id.key, votes=dict(self.votes))


def json_response(body: object, status: int = 200) -> Response:
    """A Message (or any msgspec Struct, or plain data) as a JSON response."""
    return Response(msgspec.json.encode(body), status=status, mimetype="application/json")


def create_app(kernel: BlockingKernel) -> Flask:
    """The Flask app, serving polls from agents of ``kernel`` (started by the caller)."""
    kernel.register(Poll)
    app = Flask(__name__)

    @app.post("/polls/<poll>")
    def vote(poll: str) -> Response:
        try:
            msg = msgspec.json.decode(request.get_data(), type=Vote)
        except msgspec.DecodeError as exc:  # not JSON, or not a valid Vote
            return json_response({"detail": str(exc)}, status=422)
        return json_response(kernel.ref(Poll, poll).ask(msg, timeout=2.0))

    @app.get("/polls/<poll>")
    def tally(poll: str) -> Response:
        return json_response(kernel.ref(Poll, poll).ask(GetTally(), timeout=2.0))

    return app


if __name__ == "__main__":
    # The kernel stops (draining its agents) when the server exits.
    with BlockingKernel(ask_timeout=5.0) as kernel:
        create_app(kernel).run(threaded=True)
