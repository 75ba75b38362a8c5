"""The server's guards, on its app in this process (no engine started: they answer before it):
the API key compared in constant time on every /v1 route (and /metrics when asked), CORS closed
unless configured, unforeseen errors answered without internals, and an OpenAPI document that
states every route, its bounds and its key."""

import hmac

import pytest
from fastapi.testclient import TestClient

from tokenmill.config import EngineConfig
from tokenmill.model.default import default_model_path
from tokenmill.model.tokenizer import load_tokenizer
from tokenmill.server.adapters import AdapterRegistry
from tokenmill.server.app import build_app
from tokenmill.server.config import ServerConfig

KEY = "s3cret-key"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def make_client():
    path = default_model_path()
    engine_config, tokenizer = EngineConfig.create(model=path), load_tokenizer(path)

    def make(**options) -> TestClient:
        config = ServerConfig("smol", api_key=KEY, **options)
        return TestClient(build_app(engine_config, config, tokenizer), raise_server_exceptions=False)

    return make


def test_the_key_is_compared_in_constant_time_on_every_v1_route(make_client, monkeypatch):
    client = make_client()
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    routes = [("get", "/v1/models"), ("post", "/v1/completions"), ("post", "/v1/chat/completions"),
              ("post", "/v1/load_lora_adapter"), ("post", "/v1/unload_lora_adapter")]  # fmt: skip
    for method, route in routes:
        for header in ({}, {"Authorization": "Bearer s3cret-kez"}, {"Authorization": f"Bearer {KEY}x"}):
            response = client.request(method, route, headers=header, json={})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert client.request(method, route, headers={"Authorization": f"Bearer {KEY}"}, json={}).status_code != 401
    assert len(compared) == 4 * len(routes)
    assert client.get("/metrics").status_code == 200  # open unless asked


def test_metrics_need_the_key_when_asked(make_client):
    client = make_client(api_key_on_metrics=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/health").status_code in (200, 503)  # a supervisor's probe needs no key


def preflight(client: TestClient, origin: str):
    return client.options("/v1/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "authorization"})  # fmt: skip


def test_cors_is_closed_unless_configured(make_client):
    closed = make_client()
    assert "access-control-allow-origin" not in preflight(closed, ORIGIN).headers
    assert "access-control-allow-origin" not in closed.get("/health", headers={"Origin": ORIGIN}).headers
    opened = make_client(allowed_origins=(ORIGIN,))
    assert preflight(opened, ORIGIN).headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in preflight(opened, "https://evil.example").headers


def test_an_unforeseen_error_is_a_500_without_internals(make_client, monkeypatch):
    client = make_client()

    def broken(self, created: int = 0):
        raise RuntimeError("/secret/path/model.py line 12")

    monkeypatch.setattr(AdapterRegistry, "cards", broken)
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "secret" not in response.text and ".py" not in response.text


def test_the_openapi_document_states_every_route_its_bounds_and_its_key(make_client):
    client = make_client(max_n=7)
    assert client.get("/openapi.json").status_code == 401  # it names the adapters served
    assert client.get("/docs").status_code == 404
    document = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert set(document["paths"]) == {"/health", "/version", "/metrics", "/v1/models", "/v1/completions",
                                      "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == path.startswith("/v1/")
            assert set(operation["responses"]) >= ({"200", "401", "500"} if path.startswith("/v1/") else {"200", "500"})
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(operation["responses"])
    schemas = document["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    assert completion["n"]["maximum"] == 7 and completion["model"]["enum"] == ["smol"]
    assert completion["top_p"] == {**completion["top_p"], "exclusiveMinimum": 0.0, "maximum": 1.0}
    assert schemas["ChatMessage"]["properties"]["role"]["enum"][:3] == ["system", "developer", "user"]
    assert set(schemas["ErrorBody"]["properties"]) == {"error"}
