"""The decision ledger: one row per request, feedback joined by request id (SQLite or PostgreSQL).

Below the gateway and training alike: the gateway writes rows through ``LedgerWriter``; training, OPE and
the CLI read them through ``Ledger``. Nothing here imports the gateway.
"""

from thalamus.ledger.journal import Journal
from thalamus.ledger.row import LedgerRow
from thalamus.ledger.schema import MIGRATIONS, REQUEST_COLUMNS, feedback, judge_calls, requests, schema_version
from thalamus.ledger.store import Ledger
from thalamus.ledger.writer import LedgerWriter, WriterHealth

__all__ = ["MIGRATIONS", "REQUEST_COLUMNS", "Journal", "Ledger", "LedgerRow", "LedgerWriter", "WriterHealth",
           "feedback", "judge_calls", "requests", "schema_version"]
