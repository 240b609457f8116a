"""schemathesis against the router's own OpenAPI document: generated valid and invalid requests
to every operation never get a 5xx, and every answer matches the documented status codes,
content types and bodies. The router runs on loopback (uvicorn in a thread) over in-process
fake stages, so that thousands of generated requests are answered in seconds."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from reliability_procs import router_on_fakes
from schemathesis.specs.openapi.checks import positive_data_acceptance

KEY = "sk-schema"


def accepted_unless_over_the_context(ctx, response, case):
    """schemathesis' positive-data check, except for prompts over the deployment's token limit:
    how many tokens a text makes is not something JSON Schema can say."""
    if response.status_code == 400:
        if response.json().get("error", {}).get("code") == "context_length_exceeded":
            return None
    return positive_data_acceptance(ctx, response, case)


MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def router_schema(smollm2_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("schema") / "keys"
    keys.write_text(f"{KEY}\n")
    with router_on_fakes(smollm2_dir, api_keys_file=keys) as r:
        yield schemathesis.openapi.from_url(f"{r.base_url}/openapi.json")


def test_router_conforms_to_its_openapi_document(router_schema):
    failures = []
    operations = [r.ok() for r in router_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions"}
    for op in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=op.as_strategy())
        def check(case):
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=30,
                excluded_checks=[positive_data_acceptance],
                additional_checks=[accepted_unless_over_the_context],
            )

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)
