"""A real server's application: answers every GET with its own name.

Run inside a real server's namespace: ``python httpd.py NAME [PORT]``. Listens on the
wildcard address (IPv6 socket accepting IPv4 too), so it accepts the VIP:port that
direct routing delivers unchanged as well as the health checks on its own address.
"""

from __future__ import annotations

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def make_server(name: str, port: int = 80) -> ThreadingHTTPServer:
    """A server (bound, not yet serving) answering every GET with ``name``; bound in the
    calling thread's network namespace."""
    body = f"{name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive for HTTP/1.1 clients (scenario l's)
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            pass  # thousands of requests; the runner records them itself

    return _Server(("::", port), Handler)


def main(argv: list[str]) -> int:
    name = argv[0]
    port = int(argv[1]) if len(argv) > 1 else 80
    with make_server(name, port) as server:
        print(f"{name}: listening on [::]:{port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
