"""The offline API end to end on the real model."""

from tokenmill import SamplingParams


def test_greedy_chat_answers_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)
    completion = out[0].outputs[0]
    assert "Paris" in completion.text
    assert completion.finish_reason == "stop"  # the model ended its turn with <|im_end|>


def test_request_output_has_vllm_shape(llm):
    [out] = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
    assert out.prompt == "The capital of France is"
    assert out.prompt_token_ids == llm.tokenizer.encode("The capital of France is")
    assert out.finished
    completion = out.outputs[0]
    assert len(completion.token_ids) == 5 and completion.finish_reason == "length"
    assert completion.text == llm.tokenizer.decode(completion.token_ids)
    assert completion.logprobs is None
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time


def test_outputs_come_back_in_prompt_order(llm):
    prompts = ["One, two, three,", "The quick brown fox", "def fibonacci(n):"]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert [o.prompt for o in outs] == prompts


def test_token_id_prompts_and_per_prompt_params(llm):
    ids = llm.tokenizer.encode("Water boils at")
    outs = llm.generate([{"prompt_token_ids": ids}, "Water boils at"],
                        [SamplingParams(temperature=0, max_tokens=3), SamplingParams(temperature=0, max_tokens=6)],
                        use_tqdm=False)
    assert outs[0].prompt is None and outs[0].prompt_token_ids == ids
    assert len(outs[0].outputs[0].token_ids) == 3 and len(outs[1].outputs[0].token_ids) == 6
    assert outs[1].outputs[0].token_ids[:3] == outs[0].outputs[0].token_ids


def test_stream_yields_growing_text_that_ends_as_generate_does(llm):
    params = SamplingParams(temperature=0, max_tokens=12, stop=["Paris"])
    texts = [out.outputs[0].text for out in llm.stream("The capital of France is", params)]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # streamed text is never taken back
    [full] = llm.generate("The capital of France is", params, use_tqdm=False)
    assert texts[-1] == full.outputs[0].text and "Paris" not in texts[-1]


def test_stopping_a_stream_early_aborts_its_request(llm):
    stream = llm.stream("Once upon a time", SamplingParams(temperature=0, max_tokens=50))
    next(stream), next(stream)
    stream.close()  # the autouse check then finds every KV block back in the pool
    assert not llm.engine.has_unfinished_requests()
