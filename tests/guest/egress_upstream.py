#!/usr/bin/env python3
"""A loopback upstream for the egress e2e tests (tests/egress_clients.rs).

    egress_upstream.py ROOT LOG

Binds 127.0.0.1 on a free port, prints the port on stdout, writes the
fixtures under ROOT for that port, then serves until killed. Every request
line is appended to LOG, so a test can tell which requests reached it.

  /git/...      git's smart HTTP protocol: `git http-backend` as CGI with
                GIT_PROJECT_ROOT=ROOT/git (the test puts repo.git there)
  /simple/...   a PEP 503 simple index with one wheel, hutch-demo 1.0.0
  /npm/...      an npm registry with one package, hutch-demo 1.0.0
  anything else a file under ROOT (DIR/ serves DIR/index.html)

Fixture URLs name the host as host.hutch.internal:PORT, the name a guest
reaches this host's loopback by (under an explicit proxy rule).
"""

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

NAME, VERSION = "hutch-demo", "1.0.0"
MARKER = "hutch-demo fixture payload"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def b64_digest(algo, data):
    return base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()


def wheel():
    """A minimal pure-Python wheel (METADATA, WHEEL, RECORD)."""
    dist = f"hutch_demo-{VERSION}.dist-info"
    files = {
        "hutch_demo/__init__.py": f"PAYLOAD = {MARKER!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hutch-e2e\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{p},sha256={b64_digest('sha256', d.encode())},{len(d.encode())}\n"
        for p, d in files.items()
    )
    files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return buf.getvalue()


def npm_tarball():
    """package/package.json and package/index.js, gzipped tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p, d in {
            "package/package.json": json.dumps(
                {"name": NAME, "version": VERSION, "main": "index.js"}
            ),
            "package/index.js": f"module.exports = {json.dumps(MARKER)};\n",
        }.items():
            info = tarfile.TarInfo(p)
            info.size = len(d.encode())
            info.mode = 0o644
            t.addfile(info, io.BytesIO(d.encode()))
    return buf.getvalue()


def fixtures(root, port):
    base = f"http://host.hutch.internal:{port}"
    whl_name = f"hutch_demo-{VERSION}-py3-none-any.whl"
    whl = wheel()
    write(f"{root}/files/{whl_name}", whl)
    write(f"{root}/simple/index.html", f'<html><body><a href="{NAME}/">{NAME}</a></body></html>\n')
    sha = hashlib.sha256(whl).hexdigest()
    write(
        f"{root}/simple/{NAME}/index.html",
        f'<html><body><a href="../../files/{whl_name}#sha256={sha}">{whl_name}</a></body></html>\n',
    )
    tgz = npm_tarball()
    tgz_path = f"npm/{NAME}/-/{NAME}-{VERSION}.tgz"
    write(f"{root}/{tgz_path}", tgz)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    doc = {
        "name": NAME,
        "dist-tags": {"latest": VERSION},
        "versions": {
            VERSION: {
                "name": NAME,
                "version": VERSION,
                "dist": {
                    "tarball": f"{base}/{tgz_path}",
                    "shasum": hashlib.sha1(tgz).hexdigest(),
                    "integrity": integrity,
                },
            }
        },
    }
    write(f"{root}/npm/{NAME}.json", json.dumps(doc))


class Handler(http.server.BaseHTTPRequestHandler):
    root = "."
    log = None

    def log_message(self, fmt, *args):
        pass

    def record(self):
        with open(self.log, "a") as f:
            f.write(f"{self.command} {self.path}\n")

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        self.record()
        path, _, query = self.path.partition("?")
        if path.startswith("/git/"):
            return self.git(path[len("/git"):], query)
        if path.startswith("/npm/") and not path.endswith(".tgz"):
            # The package document (npm asks for /npm/NAME).
            return self.file(f"{self.root}{path}.json", "application/json")
        if path.endswith("/"):
            path += "index.html"
        kind = "text/html" if path.endswith(".html") else "application/octet-stream"
        self.file(f"{self.root}{path}", kind)

    def file(self, path, kind):
        if ".." in path or not os.path.isfile(path):
            return self.send_error(404)
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def git(self, path_info, query):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        env = dict(os.environ)
        env.update(
            GIT_PROJECT_ROOT=f"{self.root}/git",
            GIT_HTTP_EXPORT_ALL="1",
            REQUEST_METHOD=self.command,
            PATH_INFO=path_info,
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_ADDR=self.client_address[0],
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.1",
        )
        for h in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(h):
                env["HTTP_" + h.upper().replace("-", "_")] = self.headers[h]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, data = out.partition(b"\r\n\r\n")
        if not _:
            head, _, data = out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    root, log = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    Handler.root, Handler.log = root, log
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    fixtures(root, port)
    open(log, "a").close()
    print(port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
