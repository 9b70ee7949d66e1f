#!/usr/bin/env python3
"""Local emulator of SlashID's `PUT /organizations/api-keys` and `GET /organizations/config`.

Used by the slashid test suite and demos. Standard library only (plus the `openssl` CLI for
the throw-away TLS certificates). Serves the same application over plain HTTP and HTTPS on
127.0.0.1, plus a control API under /_emulator/ (plain HTTP port only) that lets tests create
organizations, inspect what clients sent and queue faults (delays, odd statuses, dropped or
truncated answers, ...). See emulator/README.md for the details.
"""

import argparse
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

IDLE_TIMEOUT = 30        # seconds an idle keep-alive connection is kept
HANDSHAKE_TIMEOUT = 10   # seconds a client gets to finish the TLS handshake
ROTATE, CONFIG = "/organizations/api-keys", "/organizations/config"
ROUTES = {ROTATE: "PUT", CONFIG: "GET"}
ACTIONS = {"close", "reset", "reset_before_read", "truncate", "truncate_chunked", "drip",
           "stall_after_headers", "huge", "huge_header"}
FAULT_FIELDS = {"delay", "rotate", "status", "reason", "headers", "body", "json", "message",
                "content_type", "chunked", "action", "interval", "stall", "size", "repeat"}
# A fault with none of these only delays the request, which is then answered normally.
SHAPING = {"status", "reason", "headers", "body", "json", "message", "content_type", "chunked",
           "action"}

STOP = threading.Event()   # set on SIGTERM/SIGINT: ends the main loop and any sleeping fault
LOCK = threading.Lock()    # guards ORGS, GLOBAL_FAULTS, STATS and every Org
ORGS = {}
GLOBAL_FAULTS = deque()
STATS = {"connections": 0, "http_connections": 0, "https_connections": 0, "requests": 0}


def new_key():
    return "sk_" + secrets.token_urlsafe(30)   # 30 random bytes -> 40 url-safe characters


class Org:
    def __init__(self, org_id, key):
        self.id, self.key = org_id, key
        self.old_keys = set()      # every key this org had before the current one
        self.rotations = 0
        self.requests = []
        self.faults = deque()      # entries are [fault, remaining uses]


# Answers follow SlashID's OpenAPI document (spec/openapi/, checked by spec/21-openapi_spec.lua):
# an error is the bare APIResponseBase envelope (no `result` member), the organization config
# has every member OrganizationConfig requires.
def error_envelope(code, message):
    return {"errors": [{"httpcode": code, "message": message}]}


def org_config():
    """An OrganizationConfig at plausible defaults (the emulator keeps no real settings)."""
    return {"pricing_tier": "free-trial", "from_email": "", "from_phone_number_sms": "",
            "token_duration": 86400, "groups_claim_name": "groups",
            "requires_manual_approval": False, "deny_self_registration": False,
            "allowed_factor_methods": [], "authn_link_allowed_redirect_uris": [],
            "new_person_handle_patterns": [], "sudo_mode_duration": 300,
            "authn_redirect_page_ui_config": {}, "canonical_identity_ai_matching_enabled": True}


def pop_fault(queue):
    """Take one use of the fault at the head of `queue` (caller holds LOCK)."""
    if not queue:
        return None
    entry = queue[0]
    entry[1] -= 1
    if entry[1] <= 0:
        queue.popleft()
    return entry[0]


def check_fault(f):
    """Return an error message for a malformed fault object, None when it is fine."""
    if not isinstance(f, dict):
        return "each fault must be a JSON object"
    unknown = sorted(set(f) - FAULT_FIELDS)
    if unknown:
        return "unknown fault field(s): " + ", ".join(unknown)
    if "action" in f and f["action"] not in ACTIONS:
        return "unknown action %r (one of %s)" % (f["action"], ", ".join(sorted(ACTIONS)))
    if "status" in f and not (type(f["status"]) is int and 100 <= f["status"] <= 999):
        return "status must be an integer 100..999"
    if "repeat" in f and not (type(f["repeat"]) is int and f["repeat"] >= 1):
        return "repeat must be an integer >= 1"
    for name in ("delay", "interval", "stall", "size"):
        if name in f and not (type(f[name]) in (int, float) and f[name] >= 0):
            return name + " must be a number >= 0"
    if "headers" in f and not isinstance(f["headers"], dict):
        return "headers must be an object"
    for name in ("body", "reason", "content_type", "message"):
        if name in f and not isinstance(f[name], str):
            return name + " must be a string"
    if "message" in f and ("body" in f or "json" in f):
        return "message builds the body: it excludes body and json"
    return None


def queue_faults(queue, body):
    if not isinstance(body, list):
        return 400, {"error": "body must be a JSON array of fault objects"}
    for f in body:
        problem = check_fault(f)
        if problem:
            return 400, {"error": problem}
    queue.extend([f, f.get("repeat", 1)] for f in body)
    return 200, {"queued": sum(entry[1] for entry in queue)}


def control_logic(method, parts, body):
    """The /_emulator/ API. `parts` are the path segments after /_emulator/. Holds LOCK."""
    if parts == ["stats"] and method == "GET":
        return 200, dict(STATS)
    if parts == ["faults"] and method == "POST":
        return queue_faults(GLOBAL_FAULTS, body)
    if parts == ["faults"] and method == "DELETE":
        GLOBAL_FAULTS.clear()
        return 200, {"queued": 0}
    if parts == ["orgs"] and method == "GET":
        return 200, {"orgs": sorted(ORGS)}
    if parts == ["orgs"] and method == "POST":
        body = {} if body is None else body
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        org_id, key = body.get("org_id") or str(uuid.uuid4()), body.get("api_key") or new_key()
        if not isinstance(org_id, str) or not isinstance(key, str):
            return 400, {"error": "org_id and api_key must be strings"}
        if org_id in ORGS:
            return 409, {"error": "organization already exists"}
        ORGS[org_id] = Org(org_id, key)
        return 201, {"org_id": org_id, "api_key": key}
    if len(parts) in (2, 3) and parts[0] == "orgs":
        org = ORGS.get(parts[1])
        if org is None:
            return 404, {"error": "unknown organization"}
        if len(parts) == 2 and method == "GET":
            return 200, {"org_id": org.id, "api_key": org.key, "rotations": org.rotations,
                         "requests": org.requests, "faults_pending": len(org.faults)}
        if parts[2:] == ["faults"] and method == "POST":
            return queue_faults(org.faults, body)
        if parts[2:] == ["faults"] and method == "DELETE":
            org.faults.clear()
            return 200, {"queued": 0}
    return 404, {"error": "no such control endpoint: %s /_emulator/%s" % (method, "/".join(parts))}


def substitute(value, table):
    """Replace {{old_key}}/{{new_key}} in every string of a JSON value."""
    if isinstance(value, str):
        for placeholder, text in table.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, list):
        return [substitute(v, table) for v in value]
    if isinstance(value, dict):
        return {substitute(k, table): substitute(v, table) for k, v in value.items()}
    return value


def huge_pieces(key, size):
    """A JSON body of about `size` bytes, produced in 64 KiB pieces: (pieces, length)."""
    head, tail = b'{"result":{"api_key":"%s"},"pad":"' % key.encode(), b'"}'
    pad = max(0, size - len(head) - len(tail))

    def gen():
        yield head
        left = pad
        while left:
            n = min(left, 65536)
            yield b"x" * n
            left -= n
        yield tail
    return gen(), len(head) + pad + len(tail)


def split(data, n):
    """Cut `data` into at most n non-empty pieces (so a chunked answer has several chunks)."""
    step = max(1, -(-len(data) // n))
    return [data[i:i + step] for i in range(0, len(data), step)]


def chunk(piece):
    return b"%x\r\n%s\r\n" % (len(piece), piece)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True       # a stalled connection never keeps the process alive
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128    # batch tests open many connections at once

    def __init__(self, address, family, tls_ctx):
        self.address_family = family
        self.tls_ctx = tls_ctx
        self.kind = "https" if tls_ctx else "http"
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        # Runs in the accept loop: count, then hand over to a thread at once (no TLS here).
        with LOCK:
            STATS["connections"] += 1
            STATS[self.kind + "_connections"] += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        # Disconnects, resets, timeouts and TLS failures are ordinary here: stay quiet.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT      # socket timeout: an idle keep-alive connection ends after it
    server_version = "slashid-emulator"
    sys_version = ""
    verbose = False
    seen_request = False

    def setup(self):
        if self.server.tls_ctx:
            # The handshake happens here, in this connection's own thread. wrap_socket detaches
            # the accepted socket, so finish() must close the TLS socket itself.
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self.request = self.server.tls_ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.server.tls_ctx:
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.connection.close()

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.server.kind, fmt % args))

    def do_any(self):
        path = urlsplit(self.path).path
        first, self.seen_request = not self.seen_request, True
        if self.server.kind == "http" and (path + "/").startswith("/_emulator/"):
            if first:   # a connection used for control requests is not a client connection
                with LOCK:
                    STATS["connections"] -= 1
                    STATS["http_connections"] -= 1
            self.control(path)
        else:
            self.api(path)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_any

    # ---- plumbing ----------------------------------------------------------------------

    def read_body(self):
        """Read the request body (Content-Length or chunked). ValueError if malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass   # trailers
            return data
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def head(self, status, reason, ctype, length, extra=None):
        """Status line and headers as bytes; length None means chunked."""
        if reason is None:
            reason = self.responses.get(status, ("Unknown",))[0]
        hdrs = {"date": ("Date", formatdate(usegmt=True)), "server": ("Server", self.server_version),
                "content-type": ("Content-Type", ctype)}
        if length is None:
            hdrs["transfer-encoding"] = ("Transfer-Encoding", "chunked")
        else:
            hdrs["content-length"] = ("Content-Length", str(length))
        if self.close_connection:
            hdrs["connection"] = ("Connection", "close")
        for name, value in (extra or {}).items():   # a fault's headers override ours
            hdrs[name.lower()] = (name, str(value))
        lines = ["HTTP/1.1 %d %s" % (status, reason)] + ["%s: %s" % nv for nv in hdrs.values()]
        self.log_request(status)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def reply(self, status, obj, extra=None):
        body = json.dumps(obj).encode()
        head = self.head(status, None, "application/json", len(body), extra)
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def abort(self, rst):
        """Drop the connection without an answer: FIN, or RST when `rst`."""
        self.close_connection = True
        if rst:   # linger on with timeout 0: close() sends a RST instead of a FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()        # drop makefile's reference so close() really closes now
        self.connection.close()

    def wait_or_gone(self, seconds):
        """Sleep up to `seconds`; return early on shutdown or when the client goes away."""
        end = time.monotonic() + seconds
        sock = self.connection
        sock.settimeout(0.2)
        while not STOP.is_set() and end - time.monotonic() > 0:
            if select.select([sock], [], [], min(0.2, max(0, end - time.monotonic())))[0]:
                try:
                    if not sock.recv(4096):
                        return
                except (socket.timeout, ssl.SSLWantReadError):
                    pass
                except OSError:
                    return

    # ---- control API -------------------------------------------------------------------

    def control(self, path):
        try:
            data = self.read_body()
            body = json.loads(data) if data.strip() else None
        except ValueError:
            self.close_connection = True
            return self.reply(400, {"error": "body is not valid JSON"})
        parts = [unquote(p) for p in path.split("/")[2:] if p]
        with LOCK:
            status, obj = control_logic(self.command, parts, body)
        self.reply(status, obj)

    # ---- the emulated API --------------------------------------------------------------

    def api(self, path):
        org_id = (self.headers.get("SlashID-OrgID") or "").strip()
        key = self.headers.get("SlashID-API-Key")
        with LOCK:
            STATS["requests"] += 1
            org = ORGS.get(org_id)
            if org is not None:
                org.requests.append(self.record(org, key))
            fault = None
            if path in ROUTES:   # faults only hit the emulated endpoints, never stray paths
                fault = pop_fault(org.faults) if org and org.faults else pop_fault(GLOBAL_FAULTS)
        fault = fault or {}
        action = fault.get("action")
        if action == "reset_before_read":   # headers are read (to find the org), body is not
            return self.abort(rst=True)
        try:
            self.read_body()   # ignored, but it must be consumed to keep the stream in sync
        except ValueError:
            self.close_connection = True
            return self.reply(400, error_envelope(400, "malformed request body"))
        if fault.get("delay"):
            STOP.wait(fault["delay"])
        if not set(fault) & SHAPING:   # a delay-only fault: answer normally (rotate ignored)
            status, obj, extra, _ = self.logic(path, org_id, key, dry=False)
            return self.reply(status, obj, extra)
        # Without `rotate` the would-be answer is computed without changing any state.
        status, obj, extra, new = self.logic(path, org_id, key, dry=not fault.get("rotate"))
        self.send_fault(fault, status, obj, extra, {"{{old_key}}": key or "", "{{new_key}}": new or ""})

    def record(self, org, key):
        """What the control API shows about one request (caller holds LOCK)."""
        if not key:
            which = "missing"
        elif key == org.key:
            which = "current"
        else:
            which = "previous" if key in org.old_keys else "other"
        headers = {k.lower(): ("<redacted>" if k.lower() == "slashid-api-key" else v)
                   for k, v in self.headers.items()}
        return {"method": self.command, "path": self.path, "port": self.server.kind,
                "headers": headers, "key": which, "time": time.time()}

    def logic(self, path, org_id, key, dry):
        """The real endpoint: (status, envelope, extra headers, key issued or None)."""
        if path not in ROUTES:
            return 404, error_envelope(404, "not found"), {}, None
        if self.command != ROUTES[path]:
            return 405, error_envelope(405, "method not allowed"), {"Allow": ROUTES[path]}, None
        if not org_id:
            return 400, error_envelope(400, "missing SlashID-OrgID header"), {}, None
        if path == ROTATE:
            level = self.headers.get("SlashID-Required-Consistency")
            if level is not None and level.strip() not in ("local_region", "all_regions"):
                return 400, error_envelope(400, "invalid SlashID-Required-Consistency header: "
                                           "expected local_region or all_regions"), {}, None
            wait = self.headers.get("SlashID-Required-Consistency-Timeout")
            if wait is not None and not (re.fullmatch(r"[0-9]{1,3}", wait.strip())
                                         and 1 <= int(wait) <= 120):
                return 400, error_envelope(400, "invalid SlashID-Required-Consistency-Timeout "
                                           "header: expected an integer 1..120"), {}, None
        if not key:
            return 401, error_envelope(401, "missing SlashID-API-Key header"), {}, None
        with LOCK:
            org = ORGS.get(org_id)
            if org is None or org.key != key:
                return 401, error_envelope(401, "invalid API key"), {}, None
            if path == CONFIG:
                return 200, {"errors": [], "result": org_config()}, {}, None
            new = new_key()
            if not dry:   # check and swap under one lock: two racing rotations cannot both win
                org.old_keys.add(org.key)
                org.key, org.rotations = new, org.rotations + 1
        return 200, {"meta": {"pagination": {"limit": 1, "offset": 0, "total_count": 1}},
                     "errors": [], "result": {"api_key": new}}, {}, new

    def send_fault(self, fault, status, obj, extra, table):
        action = fault.get("action")
        if action in ("close", "reset"):
            return self.abort(rst=action == "reset")
        # Status and body: the fault's own, else the (real or would-be) answer's.
        if "status" in fault:
            status, extra = fault["status"], {}
            body = b""   # a fault with a status but no body sends an empty one
        else:
            body = json.dumps(obj).encode()
        if "body" in fault:
            body = substitute(fault["body"], table).encode()
        elif "json" in fault:
            body = json.dumps(substitute(fault["json"], table)).encode()
        elif "message" in fault:   # SlashID's error envelope for the status sent
            body = json.dumps(error_envelope(status, substitute(fault["message"], table))).encode()
        extra = dict(extra, **substitute(fault.get("headers", {}), table))
        if action == "huge_header":
            extra["X-Huge"] = "x" * int(fault.get("size", 200000))
        pieces, length = [body], len(body)
        if action == "huge":
            status = fault.get("status", 200)
            pieces, length = huge_pieces(table["{{new_key}}"], int(fault.get("size", 5 << 20)))
        chunked = bool(fault.get("chunked")) or action == "truncate_chunked"
        ctype = fault.get("content_type", "application/json")
        head = self.head(status, fault.get("reason"), ctype, None if chunked else length, extra)

        if action == "truncate":          # promise the full length, send half, hang up
            self.close_connection = True
            self.wfile.write(head + body[:len(body) // 2])
        elif action == "truncate_chunked":  # some chunks, never the terminating one
            self.close_connection = True
            sent = split(body, 4)
            self.wfile.write(head + b"".join(chunk(p) for p in sent[:max(1, len(sent) // 2)]))
        elif action == "stall_after_headers":
            self.close_connection = True
            self.wfile.write(head)
            self.wait_or_gone(fault.get("stall", 30))
        elif action == "drip":
            data = head + (b"".join(map(chunk, split(body, 3))) + b"0\r\n\r\n" if chunked else body)
            interval = fault.get("interval", 1.0)
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                if i + 1 < len(data) and STOP.wait(interval):
                    self.close_connection = True   # shutting down: the answer stays incomplete
                    break
        else:   # a plain answer (possibly huge, huge_header and/or chunked)
            self.wfile.write(head)
            if chunked and action != "huge":
                pieces = split(body, 3)
            for piece in pieces:
                if piece:
                    self.wfile.write(chunk(piece) if chunked else piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")


def make_tls(state_dir):
    """A fresh CA and a server certificate for 127.0.0.1/localhost/::1 via the openssl CLI."""
    cnf = os.path.join(state_dir, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = slashid emulator\n"
                "[ca]\nbasicConstraints = critical, CA:TRUE\n"
                "keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
                "[server]\nbasicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
                "subjectAltName = IP:127.0.0.1, DNS:localhost, IP:::1\n"
                "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n")
    env = dict(os.environ, OPENSSL_CONF=cnf)   # never depend on the system's openssl.cnf
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-config", cnf]

    def run(*args):
        p = subprocess.run(["openssl"] + list(args), cwd=state_dir, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode:
            raise RuntimeError("openssl %s failed: %s" % (args[0], p.stderr.decode(errors="replace")))

    run("req", "-x509", *ec, "-extensions", "ca", "-days", "30", "-subj",
        "/CN=slashid emulator test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "30",
        "-set_serial", "0x" + secrets.token_hex(8), "-extfile", cnf, "-extensions", "server",
        "-out", "server.pem")
    for name in ("ca.key", "server.key"):
        os.chmod(os.path.join(state_dir, name), 0o600)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(state_dir, "server.pem"), os.path.join(state_dir, "server.key"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def write_info(path, info):
    """Atomically write the info file (temp file in the same directory + rename, mode 0600)."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.write("\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description="Local SlashID API emulator (tests and demos).")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="plain HTTP port (0: pick a free one)")
    ap.add_argument("--tls-port", type=int, default=0, help="HTTPS port (0: pick a free one)")
    ap.add_argument("--state-dir", help="where certificates go (default: temp dir, removed at exit)")
    ap.add_argument("--info", help="write a JSON object describing the instance to this file")
    ap.add_argument("--print-env", action="store_true", help="also print SLASHID_* export lines")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.host.startswith("127."):
        ap.error("--host must be a loopback address")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    url_host = "[%s]" % host if ":" in host else host
    Handler.verbose = args.verbose

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: STOP.set())
    owned = not args.state_dir
    state_dir = os.path.abspath(args.state_dir or tempfile.mkdtemp(prefix="slashid-emulator-"))
    servers, started = [], []
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        tls_ctx = make_tls(state_dir)
        servers = [Server((host, args.port), family, None), Server((host, args.tls_port), family, tls_ctx)]
        for s in servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            started.append(s)
        org = Org(str(uuid.uuid4()), new_key())
        ORGS[org.id] = org
        http_port, https_port = (s.server_address[1] for s in servers)
        http_url, https_url = "http://%s:%d" % (url_host, http_port), "https://%s:%d" % (url_host, https_port)
        if args.info:
            write_info(args.info, {"pid": os.getpid(), "http_port": http_port, "https_port": https_port,
                                   "http_url": http_url, "https_url": https_url,
                                   "ca_file": os.path.join(state_dir, "ca.pem"), "org_id": org.id,
                                   "api_key": org.key, "state_dir": state_dir})
        print("slashid emulator ready: %s %s" % (http_url, https_url))
        if args.print_env:
            print("# emulator-made keys; HTTPS: %s with ca_file %s" % (https_url, os.path.join(state_dir, "ca.pem")))
            print("export SLASHID_BASE_URL=%s" % shlex.quote(http_url))
            print("export SLASHID_ORG_ID=%s" % shlex.quote(org.id))
            print("export SLASHID_API_KEY=%s" % shlex.quote(org.key))
        sys.stdout.flush()
        while not STOP.wait(0.25):
            pass
    except (RuntimeError, OSError) as e:
        sys.stderr.write("slashid emulator: %s\n" % e)
        return 1
    finally:
        STOP.set()   # wakes stalled/dripping connections
        for s in started:
            s.shutdown()   # returns once its accept loop has stopped (at most poll_interval)
        for s in servers:
            s.server_close()
        if owned:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
