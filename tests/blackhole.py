"""Real packet loss for tests: an nftables table of the test's own that drops every
packet between a server port and given client ports, in both directions (needs root
and ``nft``). Deleted on leaving the ``with`` block."""

from __future__ import annotations

import shutil
import subprocess
import uuid


def available() -> bool:
    return shutil.which("nft") is not None


class BlackHole:
    """nftables: drop every packet between the server's port and the given client ports."""

    def __init__(self, server_port: int, client_ports: list[int]) -> None:
        self.table = f"ingestd_cut_{uuid.uuid4().hex[:8]}"
        self.server_port = server_port
        self.client_ports = client_ports
        self.on = False

    def __enter__(self) -> BlackHole:
        ports = ", ".join(str(p) for p in self.client_ports)
        # The input hook: on loopback every packet passes it after leaving its sender,
        # so the sender sees no local error, only silence (as across a network).
        rules = f"""
table inet {self.table} {{
    set clients {{ type inet_service; elements = {{ {ports} }} }}
    chain input {{
        type filter hook input priority -300; policy accept;
        tcp sport {self.server_port} tcp dport @clients drop
        tcp dport {self.server_port} tcp sport @clients drop
    }}
}}
"""
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        self.on = True
        return self

    def lift(self) -> None:
        if self.on:
            subprocess.run(["nft", "delete", "table", "inet", self.table], check=True)
            self.on = False

    def __exit__(self, *exc: object) -> None:
        self.lift()
