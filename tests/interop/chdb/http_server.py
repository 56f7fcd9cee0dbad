#!/usr/bin/env python3
"""A current ClickHouse (PyPI `chdb-core`, in-process) behind the subset of ClickHouse's HTTP
interface that Skein's ClickHouse store uses, so its tests run against ClickHouse 26.x where
no server package of that version can be installed.

    python http_server.py PORT

- POST, SQL in the body, answers the result bytes (the statement's FORMAT clause decides).
- POST with `?query=INSERT … FORMAT RowBinary` and the rows in the body: the rows are read
  with `FROM INFILE` (the server equivalent of an HTTP insert).
- Other query parameters are settings, applied with SET before the statement.
- Errors answer 500 with ClickHouse's `Code: N. DB::Exception: …` text.
- GET /ping answers `Ok.`. One statement at a time (one session).
"""
import os
import re
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from chdb import session

SESSION = session.Session()
LOCK = threading.Lock()
IGNORED = {"query", "database", "user", "password"}


def run(sql):
    with LOCK:
        return SESSION.query(sql, "TabSeparated").bytes()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/ping"):
            self.answer(200, b"Ok.\n")
        else:
            self.answer(404, b"not found\n")

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        params = urllib.parse.parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            with LOCK:
                for k, v in params.items():
                    if k not in IGNORED:
                        SESSION.query(f"SET {k} = {v[0]}")
            if "query" in params:
                query = params["query"][0]
                with tempfile.NamedTemporaryFile(delete=False) as f:
                    f.write(body)
                try:
                    sql = re.sub(r"\bFORMAT\b", f"FROM INFILE '{f.name}' FORMAT", query, count=1)
                    out = run(sql)
                finally:
                    os.unlink(f.name)
            else:
                out = run(body.decode())
            self.answer(200, out)
        except Exception as e:  # ClickHouse's text is in the exception
            text = str(e)
            m = re.search(r"Code: \d+\..*", text, re.S)
            self.answer(500, (m.group(0) if m else text).encode())


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
