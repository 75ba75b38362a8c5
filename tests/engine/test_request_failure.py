"""An error inside one request's own work of a step (here injected into its grammar matcher's
advance, which runs for each sampled token) fails that request alone: it is reported as failed,
its blocks are freed, and the other requests of the same batch end as they would have alone."""

from tokenmill import SamplingParams
from tokenmill.engine.engine import RequestFailedError

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
PARAMS = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def test_an_error_in_one_requests_token_work_fails_it_alone(llm, monkeypatch):
    alone = [out.outputs[0].token_ids for out in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    engine = llm.engine
    ids = [engine.add_request(llm.tokenizer.encode(p), PARAMS) for p in PROMPTS]
    doomed = ids[1]
    doomed_seq = next(seq_id for seq_id, seq in engine._seqs.items() if seq.request_id == doomed)
    accept = engine.structured.accept

    def faulty_accept(seq_id: int, token_id: int) -> None:
        if seq_id == doomed_seq and engine._seqs[seq_id].num_output_tokens == 4:
            raise RuntimeError("injected fault")
        accept(seq_id, token_id)

    monkeypatch.setattr(engine.structured, "accept", faulty_accept)
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    failed = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] += out.samples[0].new_token_ids
        failed += engine.take_rejected()
    assert [request_id for request_id, _ in failed] == [doomed]
    assert isinstance(failed[0][1], RequestFailedError) and "injected" not in str(failed[0][1])
    assert len(tokens[doomed]) == 3  # what it had before the failing token
    assert tokens[ids[0]] == alone[0] and tokens[ids[2]] == alone[2]
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


def test_a_failed_sample_ends_its_siblings_too(llm, monkeypatch):
    engine = llm.engine
    request = engine.add_request(llm.tokenizer.encode(PROMPTS[0]), SamplingParams(n=2, max_tokens=8, temperature=1.0))
    first = min(seq_id for seq_id, seq in engine._seqs.items() if seq.request_id == request)

    def faulty_accept(seq_id: int, token_id: int) -> None:
        if seq_id == first:
            raise RuntimeError("injected fault")

    monkeypatch.setattr(engine.structured, "accept", faulty_accept)
    while engine.has_unfinished_requests():
        engine.step()
    assert [request_id for request_id, _ in engine.take_rejected()] == [request]
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
