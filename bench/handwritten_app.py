"""The honest baseline: the durable receiver a user would write by hand instead of running the service.

Flask; the raw body stored with one stdlib sqlite3 `INSERT OR IGNORE` keyed by the delivery id (the signature's id
header, else the SHA-256 of the body), in WAL mode with the service's own synchronous=NORMAL (so both make the same
durability promise); one connection per thread; no signature check, no parsing, no processing; answer 202.

Served by bench/intake.py under the same gunicorn.conf.py (workers, threads, worker class, access log) as the
service; the database file is HANDWRITTEN_DB (default handwritten.db in the working folder).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time

from flask import Flask, request
from flask.typing import ResponseReturnValue

from bench.bare_app import NoBackground

DATABASE = os.environ.get("HANDWRITTEN_DB", "handwritten.db")
ID_HEADERS = ("webhook-id", "svix-id")  # Standard Webhooks' signed delivery id; the other schemes have none
SCHEMA = ("CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, source TEXT NOT NULL, "
          "received_at REAL NOT NULL, body BLOB NOT NULL)")

app = Flask(__name__)
app.extensions["webhook"] = NoBackground()
_local = threading.local()


def connection() -> sqlite3.Connection:
    """This thread's connection, opened once: autocommit (each INSERT commits on its own), WAL."""
    conn: sqlite3.Connection | None = getattr(_local, "connection", None)
    if conn is None:
        conn = sqlite3.connect(DATABASE, isolation_level=None, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(SCHEMA)
        _local.connection = conn
    return conn


@app.post("/webhooks/<source>")
def receive(source: str) -> ResponseReturnValue:
    """Store the raw body once per delivery id and accept it."""
    body = request.get_data(cache=True)
    delivery = next((request.headers[h] for h in ID_HEADERS if h in request.headers), None)
    key = delivery or hashlib.sha256(body).hexdigest()
    connection().execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?)", (key, source, time.time(), body))
    return "", 202


@app.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 while the process is up."""
    return {"status": "ok"}
