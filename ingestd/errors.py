"""Error classes: the partner contract's strings, and ingestd's one exception tree.

Row errors are values (``RowError``), never exceptions: one bad row must not
disturb its neighbours. A file-level problem is a ``FileError`` exception: it
aborts the file's transaction and sends the file to ``failed/``.
The class strings are part of the partner contract (docs/formats.md): never rename.

Every exception ingestd raises on purpose derives from ``IngestdError``::

    IngestdError
    ├── FileError            the whole file fails (error_class, message)
    ├── FileChangedError     changed while read: rolled back, back to the inbox
    ├── LandingError         a company's folders cannot be made or used
    ├── Fenced               the company's lease was lost: write nothing more
    ├── RecoveryError
    │   ├── RecoveryFailed   a leftover claim could not be finished (logged)
    │   └── NoLedgerRow      a claim to finish has no ledger row
    ├── DatabaseError
    │   ├── DatabaseUnavailable   the server cannot be reached (yet)
    │   └── EmbeddedError         the embedded server cannot be started
    ├── HttpStartError       the HTTP API could not start listening
    └── SettingsError        one line naming the bad key (exit 2); also, found later:
        ├── DatabaseRefused       the server will never accept us as configured
        ├── WrongDatabase         the landing root belongs to another database
        ├── NoEmbeddedDatabase    a command that may not create one found none
        └── EmbeddedInUse         another daemon runs this state dir's embedded server
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Person Import (docs/formats.md section 1)
INVALID_MDN_FORMAT = "MobilePhoneErrors::InvalidMDNFormat"
CUSTOM_FIELD_NOT_FOUND = "PersonErrors::CustomFieldNotFound"
INVALID_SELECT_CUSTOM_FIELD_VALUE = "PersonErrors::InvalidSelectCustomFieldValue"
PERSON_NOT_FOUND = "PersonErrors::PersonNotFound"
MOBILE_PHONE_ALREADY_ASSIGNED = "PersonErrors::MobilePhoneAlreadyAssigned"
INVALID_PERSON_ID = "PersonErrors::InvalidPersonID"
INVALID_PERSON_KEY = "PersonErrors::InvalidPersonKey"
MDN_CHANGE_NOT_ALLOWED = "PersonErrors::MdnChangeNotAllowed"
PERSON_CREATE_REQUIRES = "PersonErrors::PersonCreateRequiresDeviceOrExternalPersonId"
UNIQUE_VIOLATION = "PG::UniqueViolation"
TRANSIENT_LOOKUP_FAILURE = "CarrierLookupService::TransientLookupFailureError"
PERMANENT_LOOKUP_FAILURE = "CarrierLookupService::PermanentLookupFailureError"
MALFORMED_ROW = "ImportErrors::MalformedRow"

# File level
INVALID_IMPORT_FILE_FORMAT = "PersonErrors::InvalidImportFileFormat"
INVALID_SCHEMA_NAME = "TenantEngine::SchemaErrors::InvalidSchemaNameError"
UNKNOWN_8BIT_ENCODING = "FileEngine::EncodingDetection::Unknown8BitEncodingDetected"
UNSUPPORTED_FILE = "ingestd::UnsupportedFile"
NOT_A_REGULAR_FILE = "ingestd::NotARegularFile"
EMPTY_FILE = "ingestd::EmptyFile"
INTERNAL_ERROR = "ingestd::InternalError"
UNREADABLE_FILE = "ingestd::UnreadableFile"
INVALID_FILE_NAME = "ingestd::InvalidFileName"
CONTACTS_GLOBAL = "ContactsImport::GlobalError"

# Subject contacts rows (docs/formats.md section 2 leaves the classes open; the rejected
# CSV shows only the message, these only sort the counts in result.json).
CONTACTS_REJECTED = "ContactsImport::SectionRejected"  # a row of the section is invalid
CONTACTS_UPDATE_REJECTED = "ContactsImport::UpdateRejected"  # immutable column / unknown treatment
CONTACTS_PRECONDITION_REQUIRED = "ContactsImport::PreconditionRequired"  # HTTP 428
CONTACTS_PRECONDITION_FAILED = "ContactsImport::PreconditionFailed"  # HTTP 412


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one record was rejected: an error class and a human message (both the
    partner contract, the same for every row of a class), and for the partner to act
    on: the column at fault (``field``, empty when the row as a whole is wrong) and
    what was wrong with this row (``detail``)."""

    error_class: str
    message: str
    field: str = ""
    detail: str = ""


def quoted(value: str, limit: int = 60) -> str:
    """A cell's text for a ``detail``, in single quotes; a long one cut with an ellipsis
    so a huge bad cell is not repeated in full."""
    return f"'{value if len(value) <= limit else value[:limit] + '…'}'"


class IngestdError(Exception):
    """The root of every exception ingestd raises on purpose."""


# -- files ---------------------------------------------------------------------------------

class FileError(IngestdError):
    """A problem with the whole file: nothing of it is applied. ``message`` is the
    class's fixed text where the source documents have one; ``detail`` (optional) says
    what was wrong with this file in words a partner can act on."""

    def __init__(self, error_class: str, message: str, detail: str = "") -> None:
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message
        self.detail = detail


class FileChangedError(IngestdError):
    """The file changed while it was being read: roll back and try again later."""


class NotSettled(IngestdError):
    """At its claim, the file is no longer the one judged ready, or a writer has it open:
    not claimed; it settles again in the inbox."""


class LandingError(IngestdError):
    """A company's folders cannot be created or used by ingestd (an admin must act)."""


# -- fencing -------------------------------------------------------------------------------

class Fenced(IngestdError):
    """The company's lease is no longer this worker's: nothing more may be written."""


# -- recovery ------------------------------------------------------------------------------

class RecoveryError(IngestdError):
    """A claim left in .processing/ could not be finished."""


class RecoveryFailed(RecoveryError):
    """A leftover claim could not be finished. Already logged (``file.error``, naming
    the file); the claim stays in .processing/ and is retried."""

    def __init__(self, company: str, claim_id: str) -> None:
        super().__init__(f"{company}: recovery of claim {claim_id} failed")
        self.company = company
        self.claim_id = claim_id


class NoLedgerRow(RecoveryError):
    """A claim to be finished has no ledger row (it was never applied)."""


# -- the database --------------------------------------------------------------------------

class DatabaseError(IngestdError):
    """The database cannot be used."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached (yet). ``str()`` is the reason: one line, no password."""


class EmbeddedError(DatabaseError):
    """The embedded server cannot be started. ``str()`` is one line naming the cause;
    ``log_file`` is where the server (or initdb) said more, when it got that far."""

    def __init__(self, message: str, log_file: Path | None = None) -> None:
        super().__init__(message + (f" (log: {log_file})" if log_file else ""))
        self.log_file = log_file


# -- the HTTP API --------------------------------------------------------------------------

class HttpStartError(IngestdError):
    """The HTTP API could not start listening where it was told to."""


# -- settings ------------------------------------------------------------------------------

class SettingsError(IngestdError):
    """One line naming the bad key, for the operator."""


# Configuration errors found once the database or the state dir is looked at: one line
# naming the cause, exit 2 (systemd does not restart: RestartPreventExitStatus=2).

class DatabaseRefused(SettingsError):
    """The server answered, and no wait will change its answer (an unknown database or
    role, a wrong password, no pg_hba.conf entry)."""


class WrongDatabase(SettingsError):
    """The landing root belongs to another database. ``str()`` is one line naming both."""


class NoEmbeddedDatabase(SettingsError):
    """A command that may not create the embedded database found none."""


class EmbeddedInUse(SettingsError):
    """Another daemon runs on this state directory's embedded database."""


# Messages of the Person Import row errors, as in docs/formats.md's table.
MSG_CUSTOM_FIELD_NOT_FOUND = "Custom field not found"
MSG_PERSON_NOT_FOUND = "Person not found"
MSG_MOBILE_PHONE_ALREADY_ASSIGNED = "Mobile Phone Already Assigned"
MSG_MDN_CHANGE_NOT_ALLOWED = "mdn change not allowed"
MSG_PERSON_CREATE_REQUIRES = "Creating a Person requires a device or an external person id"
MSG_UNIQUE_VIOLATION = "duplicate key value violates unique constraint"
