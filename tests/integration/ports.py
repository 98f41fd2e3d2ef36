"""Ports for the integration tests' coordinators (standard library only, so the GPU test,
which runs where python3-zmq may be missing, can use it too)."""
import random
import socket


def ephemeral_range():
    """The kernel's ephemeral port range (outgoing connections' ports), inclusive."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()[:2]
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_base_port():
    """A base port P with P, P+1 and P+2 free on 127.0.0.1, all below the ephemeral range:
    a port in it can be taken by any outgoing connection between this check and the bind,
    and a client dialling it while nothing listens can connect to itself."""
    lo, hi = ephemeral_range()
    # Below the range when there is room there, else above it.
    first, last = (10000, lo - 3) if lo - 3 >= 12000 else (hi + 1, 65530)
    for _ in range(200):
        base = random.randint(first, last)
        socks = []
        try:
            for p in range(base, base + 3):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")
