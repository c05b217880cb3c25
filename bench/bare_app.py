"""One of the bench's two baselines: a bare Flask app that reads the body of POST /webhooks/<source> and answers 202.

Served by bench/intake.py under the same gunicorn.conf.py (workers, threads, worker class, access log) as the
service, so the difference between the two is what the service does per request: verify, parse, store, hand over.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


class NoBackground:
    """Stands in for the service's app state: gunicorn.conf.py's worker hooks start and stop it."""

    def start_background(self) -> None:
        """Nothing runs in the background here."""

    def shutdown(self) -> None:
        """Nothing to stop."""


app = Flask(__name__)
app.extensions["webhook"] = NoBackground()


@app.post("/webhooks/<source>")
def receive(source: str) -> ResponseReturnValue:
    """Read the raw body as the service does, then accept it without looking at it."""
    request.get_data(cache=True)
    return jsonify(accepted=[], duplicates=[]), 202


@app.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 while the process is up."""
    return jsonify(status="ok")
