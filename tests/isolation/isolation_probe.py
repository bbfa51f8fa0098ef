"""The program every isolation test pod runs, and the probes run inside those pods.

It needs only Python's standard library (the worker image has no shell tools) and is passed to
``python3 -c``, so it stays one self-contained file without two opening braces in a row (the
rendering's placeholder syntax). Every probe prints one JSON object on stdout and exits 0.

    serve                 listen on TCP 8080 and 8081; every connection gets the BANNER line
    tcp HOST PORT         {"result": "open" | "refused" | "timeout" | "unreachable" | "error", ...}
    dns NAME              resolve NAME's A record through the pod's nameserver (/etc/resolv.conf)
    pod                   the process's security facts (uid, capabilities, seccomp, token, writes)
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import struct
import sys
import threading

BANNER = b"apwa-isolation-probe\n"
PORTS = (8080, 8081)
TIMEOUT_S = 3.0
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def serve() -> None:
    def loop(port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        while True:
            conn, _ = s.accept()
            try:
                conn.sendall(BANNER)
            finally:
                conn.close()

    for port in PORTS:
        threading.Thread(target=loop, args=(port,), daemon=True).start()
    threading.Event().wait()


def tcp(host: str, port: str) -> dict:
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as s:
            s.settimeout(1.0)
            try:
                banner = s.recv(64).decode(errors="replace").strip()
            except OSError:
                banner = ""
            return {"result": "open", "banner": banner}
    except ConnectionRefusedError:
        return {"result": "refused"}
    except TimeoutError:
        return {"result": "timeout"}
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return {"result": "unreachable", "error": str(e)}
        return {"result": "error", "error": str(e)}


def _nameserver() -> str:
    with open("/etc/resolv.conf") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    raise RuntimeError("no nameserver in /etc/resolv.conf")


def dns(name: str) -> dict:
    """One A query over UDP with a timeout (getaddrinfo has none and retries for many seconds)."""
    server = _nameserver()
    qid = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        try:
            s.connect((server, 53))
            s.send(query)
            reply = s.recv(4096)
        except ConnectionRefusedError:
            return {"result": "refused", "server": server}
        except TimeoutError:
            return {"result": "timeout", "server": server}
        except OSError as e:
            return {"result": "error", "server": server, "error": str(e)}
    rid, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    rcode = flags & 0xF
    if rid != qid or rcode != 0 or answers == 0:
        return {"result": "no-answer", "server": server, "rcode": rcode}
    addresses = []
    pos = 12 + len(question) + 4
    for _ in range(answers):
        pos = _skip_name(reply, pos)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += length
    return {"result": "resolved", "server": server, "addresses": addresses}


def _skip_name(msg: bytes, pos: int) -> int:
    while True:
        n = msg[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1


def _status() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _write(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("probe")
        os.unlink(path)
        return "written"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def pod() -> dict:
    st = _status()
    root_options = ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == "/":
                root_options = parts[3]
    return {
        "uid": int(st["Uid"].split()[0]),
        "noNewPrivs": int(st["NoNewPrivs"]),
        "capEff": int(st["CapEff"], 16),
        "capBnd": int(st["CapBnd"], 16),
        "seccomp": int(st["Seccomp"]),
        "token": os.path.exists(TOKEN),
        "rootMount": root_options.split(",")[0],
        "writeRoot": _write("/var/tmp/apwa-probe"),
        "writeTmp": _write("/tmp/apwa-probe"),
    }


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "serve":
        serve()
        return
    result = {"tcp": tcp, "dns": dns, "pod": pod}[mode](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
