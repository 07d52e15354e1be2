"""TCP peers for the interception tests, no part of mesh.

serve PORT: listens on PORT (all addresses), prints "ready" once it does,
and answers each connection with the destination the client dialled as
the kernel recorded it before a nat REDIRECT (SO_ORIGINAL_DST), or
"direct PORT" when the connection was not redirected.

echo PORT: listens, prints "ready", and sends back every byte it gets;
when the client half-closes, it sends "<n> bytes then EOF\\n" and closes.

banner PORT TEXT: listens, prints "ready", and greets each connection with
TEXT first (a server that speaks first, as SMTP does), then echoes lines.

call HOST PORT [UID]: connects (as UID if given), prints the answer, or
"failed: why" within 2 seconds.

talk HOST PORT TEXT: sends TEXT (backslash escapes such as \\x16 read as
the bytes they name), half-closes its side, and prints all it
gets until the server closes.

greet HOST PORT: prints the milliseconds from connect to the server's
first line, and the line.

bulk HOST PORT MB: sends MB megabytes (seeded pseudo-random) while reading
the echo back, half-closes, and prints "same N" when the N bytes echoed
are the bytes sent, else "different".
"""
import hashlib
import random
import time
import encodings.idna  # loaded before setuid: root's python files may be unreadable after
import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    print("ready", flush=True)
    return s


def each(s, handle):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def serve(port):
    def handle(c):
        try:
            raw = c.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            dport, = struct.unpack("!H", raw[2:4])
            dip = socket.inet_ntoa(raw[4:8])
            local = c.getsockname()
            if (dip, dport) == (local[0], local[1]):
                answer = "direct %d" % port
            else:
                answer = "%s:%d" % (dip, dport)
        except OSError:
            answer = "direct %d" % port
        c.sendall((answer + "\n").encode())
        c.close()
    each(listen(port), handle)


def echo(port):
    def handle(c):
        n = 0
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            n += len(b)
            c.sendall(b)
        c.sendall(("%d bytes then EOF\n" % n).encode())
        c.close()
    each(listen(port), handle)


def banner(port, text):
    def handle(c):
        c.sendall((text + "\r\n").encode())
        f = c.makefile("rwb")
        for line in f:
            f.write(line)
            f.flush()
        c.close()
    each(listen(port), handle)


def call(host, port, uid):
    if uid is not None:
        os.setuid(uid)
    try:
        c = socket.create_connection((host, port), timeout=2)
        print(c.makefile().readline().strip(), flush=True)
    except OSError as e:
        print("failed: %s" % e, flush=True)


def talk(host, port, text):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(text.encode("latin-1").decode("unicode_escape").encode("latin-1"))
    try:
        c.shutdown(socket.SHUT_WR)
    except OSError:
        # Already closed by a server that answered at once (a 400).
        pass
    out = b""
    while True:
        try:
            b = c.recv(1 << 16)
        except ConnectionResetError:
            # A server that answers and closes with our bytes unread
            # resets; what it sent before is the answer.
            break
        if not b:
            break
        out += b
    print(out.decode("latin-1"), end="", flush=True)


def greet(host, port):
    start = time.monotonic()
    c = socket.create_connection((host, port), timeout=10)
    line = c.makefile().readline().strip()
    print("%.1f %s" % ((time.monotonic() - start) * 1000, line), flush=True)


def bulk(host, port, mb):
    rng = random.Random(7)
    chunk = rng.randbytes(1 << 20)
    c = socket.create_connection((host, port), timeout=30)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = bytearray()
    total = mb << 20

    def send():
        for i in range(mb):
            piece = bytes(b ^ (i & 0xff) for b in chunk[:64]) + chunk[64:]
            sent.update(piece)
            c.sendall(piece)
        c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    n = 0
    tail = b""
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        if n + len(b) <= total:
            got.update(b)
        else:
            keep = max(0, total - n)
            got.update(b[:keep])
            tail += b[keep:]
        n += len(b)
    t.join()
    same = got.digest() == sent.digest() and tail.startswith(b"%d bytes then EOF" % total)
    print(("same %d" % total) if same else "different (%d bytes back, tail %r)" % (n, tail[:40]), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]))
    elif mode == "echo":
        echo(int(sys.argv[2]))
    elif mode == "banner":
        banner(int(sys.argv[2]), sys.argv[3])
    elif mode == "talk":
        talk(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "greet":
        greet(sys.argv[2], int(sys.argv[3]))
    elif mode == "bulk":
        bulk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        call(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
