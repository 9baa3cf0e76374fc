"""`torchrun ARGS...` whose rendezvous store listens on one address, KIT_BIND_HOST, instead of
every interface of the node.

With the static rendezvous (--master-addr/--master-port), rank 0's agent hosts a TCPStore,
and torch gives TCPStore no address to listen on: it binds every interface, so anyone who
reaches the port can read and write the job's store. TCPStore does accept a socket its caller
bound (`master_listen_fd`), which is what this hands it: a socket bound to KIT_BIND_HOST on
KIT_PORT (torchrun's --master-port)."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import static_tcp_rendezvous
from torch.distributed.run import main

HOST = os.environ["KIT_BIND_HOST"]
PORT = int(os.environ.get("KIT_PORT", "29500"))


def bound_socket(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


LISTENER = bound_socket(HOST, PORT)


def store(host_name: str, port: int, world_size: int | None = None, is_master: bool = False, *args: Any, **kwargs: Any) -> TCPStore:
    if is_master:
        kwargs["master_listen_fd"] = LISTENER.fileno()
    return TCPStore(host_name, port, world_size, is_master, *args, **kwargs)


static_tcp_rendezvous.TCPStore = store  # type: ignore[assignment,misc]
print(f"torchrun: the rendezvous store listens on {HOST}:{PORT} only", flush=True)
sys.exit(main(sys.argv[1:]))
