"""LoRA through `tokenmill serve` and the openai client: an adapter is chosen by its name in
`model` and gives peft's greedy tokens; /v1/models lists it under the base; an unknown name is a
404 in OpenAI's shape; adapters load and unload at run time while another request streams; with
more adapters than slots, loads and swaps are counted in /metrics."""

import threading

import httpx
import openai
import pytest
import torch

from tests.live_server import API_KEY, MODEL, start_server
from tests.lora.adapters import TARGETS, make_adapter

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lora_server(gguf_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-server")
    peft_models = {name: make_adapter(gguf_path, root / name, seed=seed, rank=4, targets=TARGETS)
                   for name, seed in (("alpha", 5), ("beta", 6), ("gamma", 7))}
    server = start_server(root, "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
                          "--lora-modules", f"alpha={root / 'alpha'}", f"beta={root / 'beta'}")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    yield server, client, peft_models, root
    server.stop()


def _greedy(client, model: str, max_tokens: int = 8) -> str:
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0).choices[0].text


def test_the_adapter_named_in_model_gives_pefts_greedy_tokens(lora_server, gguf_path):
    server, client, peft_models, _ = lora_server
    from tokenmill.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(gguf_path)
    ids = tokenizer.encode(PROMPT)
    for name in ("alpha", "beta"):
        with torch.no_grad():
            out = peft_models[name].generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        assert _greedy(client, name) == tokenizer.decode(out[0, len(ids):].tolist())
    assert _greedy(client, "alpha") != _greedy(client, MODEL)


def test_models_lists_the_adapters_under_the_base_and_an_unknown_name_is_a_404(lora_server):
    server, client, _, _ = lora_server
    cards = {card.id: card for card in client.models.list().data}
    assert cards[MODEL].parent is None and cards["alpha"].parent == MODEL and cards["beta"].parent == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="delta", prompt=PROMPT, max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_load_and_unload_at_run_time_while_another_request_streams(lora_server):
    server, client, _, root = lora_server
    streamed: list[str] = []

    def stream() -> None:
        chunks = client.completions.create(model=MODEL, prompt="Count: one, two,", max_tokens=120, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True})
        streamed.extend(chunk.choices[0].text for chunk in chunks if chunk.choices)

    worker = threading.Thread(target=stream)
    worker.start()
    post = lambda path, body: httpx.post(f"{server.url}/v1/{path}", json=body, headers=server.headers(), timeout=60)  # noqa: E731
    assert post("load_lora_adapter", {"lora_name": "gamma", "lora_path": str(root / "gamma")}).status_code == 200
    gamma = _greedy(client, "gamma")
    assert gamma and gamma != _greedy(client, MODEL)
    assert post("unload_lora_adapter", {"lora_name": "gamma"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _greedy(client, "gamma")
    bad = post("load_lora_adapter", {"lora_name": "nowhere", "lora_path": str(root / "missing")})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
    worker.join(120)
    assert len(streamed) > 100  # the stream went on undisturbed
    unauthorized = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "y"})
    assert unauthorized.status_code == 401


def test_three_adapters_over_two_slots_count_loads_and_swaps(lora_server):
    server, client, _, root = lora_server
    httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "gamma2", "lora_path": str(root / "gamma")},
               headers=server.headers(), timeout=60)
    before = server.metric("tokenmill:lora_swaps_total")
    for name in ("alpha", "beta", "gamma2", "alpha"):
        assert _greedy(client, name, 2)
    server.wait_idle()
    assert server.metric("tokenmill:lora_swaps_total") - before >= 2
    assert server.metric("tokenmill:lora_loads_total") >= 3
