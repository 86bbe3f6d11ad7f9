"""A WSGI application on the standard library's server, as Flask or Django apps run: it logs,
for each request, the method and every `HTTP_*` variable WSGI derived from the headers (where
`Tessera-Caller-Kind` and `Tessera_Caller_Kind` both land as HTTP_TESSERA_CALLER_KIND), and
answers 200. No Tessera code.

Usage: wsgi_upstream.py PORT LOG_FILE
"""

import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

port, log = int(sys.argv[1]), sys.argv[2]


def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "headers": seen}) + "\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
