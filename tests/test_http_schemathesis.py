"""Schemathesis against the served /openapi.json: generated requests (a bounded number
per operation) never get a 5xx, and every answer conforms to the document (status,
content type, headers, the error object's schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from daemon_helpers import StartDaemon
from http_helpers import Api, start_api
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance


@schemathesis.serializer("text/csv")
def _csv(ctx: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()


@pytest.fixture
def api(start_daemon: StartDaemon, db_url: str, landing: Path, env: dict[str, str]) -> Api:
    return start_api(start_daemon, db_url, landing, env)


def test_api_conforms_to_its_openapi_document(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{api.port}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            if "company" in (case.path_parameters or {}) and case.path_parameters[
                    "company"].endswith(("a", "e", "i", "o", "u")):
                case.path_parameters["company"] = "acme"  # some reach the real company
            # A body the schema allows (any text) is not always a valid file: CSV with a
            # header row, or a Person Import, is more than a JSON schema can say. So a
            # 400 for a schema-valid body is the file's verdict, not a failure.
            case.call_and_validate(headers={"Authorization": f"Bearer {api.token}"},
                                   excluded_checks=[positive_data_acceptance])
        conforms()


EXAMPLES = 15  # per operation: bounded, so the suite stays quick
