"""A TCP peer for the redirect tests, no part of mesh.

serve PORT: listens on PORT (all addresses), prints "ready" once it does,
and answers each connection with the destination the client dialled as
the kernel recorded it before a nat REDIRECT (SO_ORIGINAL_DST), or
"direct PORT" when the connection was not redirected.

call HOST PORT [UID]: connects (as UID if given), prints the answer, or
"failed: why" within 2 seconds.
"""
import encodings.idna  # loaded before setuid: root's python files may be unreadable after
import os
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
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


def call(host, port, uid):
    if uid is not None:
        os.setuid(uid)
    try:
        c = socket.create_connection((host, port), timeout=2)
        print(c.makefile().readline().strip(), flush=True)
    except OSError as e:
        print("failed: %s" % e, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
