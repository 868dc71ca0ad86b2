"""Tests for the local OpenAI-compatible test server (rare.testing.openai_server)."""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402

from rare.testing.openai_server import ServerConfig, serve, serve_process  # noqa: E402
from rare.testing.responder import default_responder, prompt_key  # noqa: E402

DOCS = {
    "photosynthesis": (
        "Chloroplasts capture photons; chlorophyll pigments drive photosynthesis, converting carbon dioxide "
        "and water into glucose. The Calvin cycle fixes carbon using rubisco, while thylakoid membranes host "
        "the light reactions that produce ATP and NADPH."
    ),
    "volcano": (
        "Stratovolcanoes erupt explosively because viscous andesitic magma traps dissolved gases. Pyroclastic "
        "flows, lahars and tephra endanger settlements; seismometers and tiltmeters help volcanologists "
        "forecast eruptions."
    ),
    "banking": (
        "Central banks adjust interest rates to manage inflation. Quantitative easing expands the monetary base, "
        "while reserve requirements and open market operations influence commercial lending and liquidity."
    ),
}


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": text}]


def chat_body(messages: list[dict]) -> dict:
    return {"model": "test-model", "messages": messages}


def post(url: str, payload: dict, headers: dict | None = None, timeout: float = 5.0):
    request = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return urllib.request.urlopen(request, timeout=timeout)


def chat(url: str, messages: list[dict], **extra) -> dict:
    with post(url, {"model": "test-model", "messages": messages, **extra}) as response:
        return json.loads(response.read())


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def server():
    with serve(ServerConfig(batch_delay_s=0.2)) as running:
        yield running


def test_litellm_completion_gets_deterministic_answer_and_usage(server):
    messages = user("Explain why " + DOCS["volcano"])
    response = litellm.completion(
        model="openai/test-model", api_base=server.url, api_key="x", messages=messages, max_retries=0
    )
    content = response.choices[0].message.content
    assert content == default_responder({"model": "test-model", "messages": messages})
    lines = content.splitlines()
    assert lines[0].startswith("Step 1:") and lines[-1].startswith("Final answer:")
    assert 60 <= len(content.split()) <= 120
    assert "stratovolcanoes" in content.lower()
    assert response.choices[0].finish_reason == "stop"
    prompt_words = sum(len(m["content"].split()) for m in messages)
    assert response.usage.prompt_tokens == prompt_words
    assert response.usage.completion_tokens == len(content.split())
    assert response.usage.total_tokens == prompt_words + len(content.split())


def test_same_request_twice_gives_identical_response(server):
    messages = user("Compare these: " + DOCS["banking"])
    first = chat(server.url, messages)
    second = chat(server.url, messages)
    other = chat(server.url, user("Compare these: " + DOCS["photosynthesis"]))
    assert first == second
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


def test_json_mode_returns_hard_query_that_retrieves_its_document(server):
    messages = user("Write a hard_query JSON for this document:\n" + DOCS["photosynthesis"])
    response = litellm.completion(
        model="openai/test-model",
        api_base=server.url,
        api_key="x",
        messages=messages,
        response_format={"type": "json_object"},
        max_retries=0,
    )
    hard_query = json.loads(response.choices[0].message.content)["hard_query"]
    assert hard_query["question"] and hard_query["scenario"]

    # A tiny idf-weighted term match: the question must rank its source document first.
    tokenize = lambda text: {w.strip(".,;:?").lower() for w in text.split()}  # noqa: E731
    doc_terms = {name: tokenize(text) for name, text in DOCS.items()}
    query = tokenize(hard_query["question"])
    idf = {t: math.log(1 + len(DOCS) / (1 + sum(t in d for d in doc_terms.values()))) for t in query}
    scores = {name: sum(idf[t] for t in query & terms) for name, terms in doc_terms.items()}
    assert max(scores, key=scores.get) == "photosynthesis"


def test_json_schema_response_fills_required_properties(server):
    schema = {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["correct", "incorrect"]},
            "rationale": {"type": "string"},
            "score": {"type": "integer", "minimum": 1},
        },
        "required": ["verdict", "rationale", "score"],
    }
    body = chat(
        server.url,
        user("Judge this answer about " + DOCS["banking"]),
        response_format={"type": "json_schema", "json_schema": {"name": "judge", "schema": schema}},
    )
    result = json.loads(body["choices"][0]["message"]["content"])
    assert set(result) == {"verdict", "rationale", "score"}
    assert result["verdict"] in ("correct", "incorrect")
    assert isinstance(result["rationale"], str) and result["rationale"]
    assert isinstance(result["score"], int)


def test_stats_count_chat_requests_per_prompt_key(server):
    a, b = user("first " + DOCS["volcano"]), user("second " + DOCS["volcano"])
    for messages in (a, a, b):
        chat(server.url, messages)
    stats = server.stats()
    assert stats["prompt_keys"] == {prompt_key(a): 2, prompt_key(b): 1}
    assert stats["endpoints"] == {"POST /v1/chat/completions": 3}
    assert stats["total_requests"] == 3
    assert [r["prompt_key"] for r in stats["recent"]] == [prompt_key(a), prompt_key(a), prompt_key(b)]
    assert {r["status"] for r in stats["recent"]} == {200}
    server.reset()
    assert server.stats()["total_requests"] == 0


def test_scripted_429_has_retry_after_then_recovers(server):
    server.configure(script=["429", "429_no_retry_after", "ok"], retry_after_s=2)
    messages = user("rate limited " + DOCS["banking"])
    with pytest.raises(urllib.error.HTTPError) as first:
        chat(server.url, messages)
    assert first.value.code == 429
    assert first.value.headers["Retry-After"] == "2"
    error = json.loads(first.value.read())["error"]
    assert error["code"] == "rate_limit_exceeded" and error["message"]
    with pytest.raises(urllib.error.HTTPError) as second:
        chat(server.url, messages)
    assert second.value.code == 429 and second.value.headers["Retry-After"] is None
    assert chat(server.url, messages)["choices"][0]["message"]["content"]
    assert [r["fault"] for r in server.stats()["recent"]] == ["429", "429_no_retry_after", None]


def test_litellm_maps_injected_faults_to_its_exceptions(server):
    server.configure(script=["429", "503"])
    kwargs = dict(model="openai/test-model", api_base=server.url, api_key="x", messages=user("hi there"), max_retries=0)
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(**kwargs)
    with pytest.raises(litellm.ServiceUnavailableError):
        litellm.completion(**kwargs)


def test_drop_closes_connection_without_response(server):
    server.configure(script=["drop"])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    payload = json.dumps({"model": "test-model", "messages": user("drop me")})
    connection.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        connection.getresponse()
    connection.close()
    record = server.stats()["recent"][-1]
    assert record == {
        "prompt_key": prompt_key(user("drop me")),
        "model": "test-model",
        "status": None,
        "fault": "drop",
        "source": "http",
    }
    assert chat(server.url, user("drop me"))["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("empty", lambda content, finish: content == "" and finish == "stop"),
        ("length", lambda content, finish: finish == "length" and 0 < len(content.split()) < 40),
        ("malformed_json", lambda content, finish: "{" in content and not _parses(content)),
        ("truncated_json", lambda content, finish: content.startswith('{"hard_query"') and not _parses(content)),
    ],
)
def test_content_faults(server, fault, check):
    server.configure(script=[fault])
    body = chat(server.url, user("Give a hard_query for " + DOCS["volcano"]))
    assert check(body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"])


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_timeout_and_trickle_faults(server):
    server.configure(script=["timeout", "trickle"], timeout_sleep_s=0.5, trickle_s=0.3)
    messages = user("slow " + DOCS["banking"])
    with pytest.raises(TimeoutError):
        with post(server.url, {"model": "test-model", "messages": messages}, timeout=0.2) as response:
            response.read()
    start = time.monotonic()
    body = chat(server.url, messages)
    assert time.monotonic() - start >= 0.25
    assert body == chat(server.url, messages)


def test_fault_rates_are_deterministic_per_sequence_number(server):
    server.configure(faults={"500": 0.5}, seed=7)

    def statuses() -> list[int]:
        out = []
        for i in range(20):
            try:
                chat(server.url, user(f"request {i}"))
                out.append(200)
            except urllib.error.HTTPError as exc:
                out.append(exc.code)
        return out

    first = statuses()
    server.reset()
    assert statuses() == first
    assert 200 in first and 500 in first


def test_fail_prompt_keys_fail_permanently_and_api_key_is_checked(server):
    doomed = user("doomed " + DOCS["volcano"])
    server.configure(fail_prompt_keys={prompt_key(doomed): "500"}, require_api_key="secret")
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        chat(server.url, user("fine"))
    assert unauthorized.value.code == 401
    auth = {"Authorization": "Bearer secret"}
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as failed:
            post(server.url, {"model": "test-model", "messages": doomed}, headers=auth)
        assert failed.value.code == 500
        assert json.loads(failed.value.read())["error"]["type"] == "server_error"
    with post(server.url, {"model": "test-model", "messages": user("fine")}, headers=auth) as response:
        assert response.status == 200


def shout_responder(body: dict) -> str:
    return body["messages"][-1]["content"].upper()


def test_pluggable_responder_and_streaming(server):
    server.configure(responder=f"{__name__}:shout_responder")
    chunks = litellm.completion(
        model="openai/test-model",
        api_base=server.url,
        api_key="x",
        messages=user("line one\nline two"),
        stream=True,
        max_retries=0,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "LINE ONE\nLINE TWO"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(
            urllib.request.Request(server.base_url + "/_config", data=b'{"no_such_field": 1}', method="POST"), timeout=5
        )
    assert bad.value.code == 400


def test_models_endpoint(server):
    with urllib.request.urlopen(server.url + "/models", timeout=5) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["test-model"]


def test_batch_flow(server):
    doomed = user("batch doomed " + DOCS["banking"])
    server.configure(fail_prompt_keys={prompt_key(doomed): "500"})
    rows = {f"row-{i}": user(f"batch row {i}: " + DOCS["volcano"]) for i in range(3)}
    rows["row-doomed"] = doomed
    jsonl = "".join(
        json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": chat_body(m)}) + "\n"
        for cid, m in rows.items()
    )
    target = dict(custom_llm_provider="openai", api_base=server.url, api_key="x")
    file = litellm.create_file(file=("requests.jsonl", io.BytesIO(jsonl.encode())), purpose="batch", **target)
    create = dict(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", **target)
    batch = litellm.create_batch(**create)
    statuses = [batch.status]
    deadline = time.monotonic() + 5
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.03)
        batch = litellm.retrieve_batch(batch_id=batch.id, **target)
        statuses.append(batch.status)
    order = ["validating", "in_progress", "completed"]
    assert statuses[0] == "validating" and statuses[-1] == "completed"
    assert statuses == sorted(statuses, key=order.index)
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 1

    def download(file_id: str) -> list[dict]:
        with urllib.request.urlopen(f"{server.url}/files/{file_id}/content", timeout=5) as response:
            return [json.loads(line) for line in response.read().decode().splitlines()]

    output = download(batch.output_file_id)
    assert sorted(r["custom_id"] for r in output) == ["row-0", "row-1", "row-2"]
    for record in output:
        assert record["error"] is None and record["response"]["status_code"] == 200
        expected = default_responder(chat_body(rows[record["custom_id"]]))
        assert record["response"]["body"]["choices"][0]["message"]["content"] == expected
    errors = download(batch.error_file_id)
    assert [(r["custom_id"], r["response"]["status_code"]) for r in errors] == [("row-doomed", 500)]
    assert server.stats()["prompt_keys"][prompt_key(rows["row-0"])] == 1

    second = litellm.create_batch(**create)
    cancelled = litellm.cancel_batch(batch_id=second.id, **target)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None


def test_serve_stops_cleanly():
    def server_threads():
        return {t for t in threading.enumerate() if t.name == "openai-test-server"}

    before = server_threads()  # other fixtures' servers may be running
    with serve() as running:
        port = running.port
        assert chat(running.url, user("hello"))["object"] == "chat.completion"
    assert port_is_closed(port)
    assert server_threads() == before


def test_serve_process_starts_and_stops_subprocess():
    with serve_process(ServerConfig(latency_s=0.05, faults={"500": 0.0})) as running:
        process = running.process
        assert process.poll() is None
        start = time.monotonic()
        assert chat(running.url, user("hello"))["choices"][0]["message"]["content"]
        assert time.monotonic() - start >= 0.05
        assert running.configure(latency_s=0)["latency_s"] == 0
        assert running.stats()["total_requests"] == 1
    assert process.poll() is not None
    assert port_is_closed(running.port)
