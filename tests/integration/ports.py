"""Ports for the integration tests' coordinators (standard library only, so the GPU test,
which runs where python3-zmq may be missing, can use it too)."""
import random
import socket


def ephemeral_low():
    """The first port of the kernel's ephemeral range (outgoing connections' ports)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port():
    """A base port P with P, P+1 and P+2 free on 127.0.0.1, all below the ephemeral range:
    a port in it can be taken by any outgoing connection between this check and the bind,
    and a client dialling it while nothing listens can connect to itself."""
    top = max(ephemeral_low() - 3, 12000)
    for _ in range(200):
        base = random.randint(10000, top)
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
