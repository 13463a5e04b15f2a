#!/usr/bin/env python3
"""An HTTPS upstream for the egress e2e tests (tests/egress_clients.rs).

    egress_tls_echo.py CERT KEY MARKER

Binds 127.0.0.1 on a free port, prints the port on stdout, and answers
every request with MARKER on a line, then the request's head echoed back
(as a careless upstream might). Each head is also printed on stderr, so the
test sees what reached the upstream.
"""

import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    marker = ""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        head = f"{self.requestline}\n{self.headers}"
        print(f"HEAD {head!r}", file=sys.stderr, flush=True)
        body = f"{self.marker}\n{head}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def main():
    cert, key, Handler.marker = sys.argv[1:4]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
