"""A file's life: claim → apply (one transaction with its ledger row) → sidecars → move.

This is where files move and where the ledger makes it exactly once: a file in
``.processing/`` whose ledger row committed is only finished, never applied again.
It works the same for every format: which applier reads a file and which sidecars it
gets is ``formats``' answer. One part a job:

* ``claim``: hold the company (lock and lease), claim a file, give it back;
* ``apply``: one transaction: the file's rows and its ledger row;
* ``finish``: the sidecars, then the move into done/ or failed/;
* ``recovery``: finish or redo the claims a crash left behind;
* ``pipeline``: wires them for one file, and the dry run (``ingestd check``);
* ``context``: what they hand each other (``FileContext``), never looked up.
"""

from ingestd.lifecycle.apply import sha256_of
from ingestd.lifecycle.context import Claim, FileContext, Held, Outcome, Status
from ingestd.lifecycle.pipeline import Pipeline

__all__ = ["Claim", "FileContext", "Held", "Outcome", "Pipeline", "Status", "sha256_of"]
