"""The OpenAPI document (tollgate_ingress.openapi) names exactly the app's routes, so it cannot drift from them;
tests/e2e/test_fuzz_api.py checks the answers against it."""

from __future__ import annotations

from typing import Any

import httpx2
from fastapi.openapi.utils import get_openapi

#: Served beside the API, not part of it.
UNDOCUMENTED = {("get", "/openapi.json")}


async def test_the_document_lists_every_route_and_only_those(app: Any, client: httpx2.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    generated = get_openapi(title="routes", version="0", routes=app.routes)  # FastAPI's view of what is served
    served = {(method, path) for path, operations in generated["paths"].items() for method in operations}
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert documented == served - UNDOCUMENTED


async def test_every_operation_says_who_may_call_it_and_documents_its_errors(client: httpx2.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert "security" in operation, where
            for requirement in operation["security"]:
                assert set(requirement) <= set(schemes), where
            if path.startswith(("/v1/", "/admin/")):
                assert operation["security"], f"{where} must require credentials"
                assert {"400", "401", "429"} <= set(operation["responses"]), where
