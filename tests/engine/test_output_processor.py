"""The front end's output processor on the real tokenizer: deltas carry only what is new, stop
strings end a sample (and ask the core to abort it), and the work per step does not grow with
the output."""

import pytest

from tokenmill.engine.output_processor import OutputProcessor
from tokenmill.engine.messages import EngineOutput, SampleOutput
from tokenmill.model.tokenizer import load_tokenizer
from tokenmill.outputs import Logprob, RequestMetrics
from tokenmill.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return load_tokenizer(gguf_path)


def core_output(samples, finished=False) -> EngineOutput:
    return EngineOutput("r", samples, finished, RequestMetrics(arrival_time=0.0), num_cached_tokens=0)


def sample(index, token_ids, finish=None, logprobs=False):
    return SampleOutput(index, token_ids, [{t: Logprob(-0.5, 1)} for t in token_ids] if logprobs else None, finish,
                        None)


def test_deltas_carry_only_what_is_new_for_each_sample(tokenizer):
    processor = OutputProcessor(tokenizer)
    hello, world = tokenizer.encode(" Hello"), tokenizer.encode(" world")
    processor.add_request("r", None, [1, 2], SamplingParams(n=2, logprobs=1))
    [first] = processor.process([core_output([sample(0, hello, logprobs=True), sample(1, world, logprobs=True)])])
    assert [(c.text, c.token_ids) for c in first.completions] == [(" Hello", hello), (" world", world)]
    [second] = processor.process([core_output([sample(0, world, "length", logprobs=True)])])
    assert [(c.index, c.text, c.token_ids, c.finish_reason) for c in second.completions] == [(0, " world", world,
                                                                                               "length")]
    assert [list(lp) for lp in second.completions[0].logprobs] == [world]
    assert second.completions[0].logprobs[0][world[0]].decoded_token is not None
    assert not second.finished
    [last] = processor.process([core_output([sample(1, hello, "length", logprobs=True)], finished=True)])
    assert last.finished and last.completions[0].text == " Hello"
    out = processor.pop_output("r")
    assert [c.text for c in out.outputs] == [" Hello world", " world Hello"]
    with pytest.raises(KeyError):  # popped: forgotten
        processor.output("r")


def test_a_stop_string_ends_its_sample_here_and_asks_the_core_to_abort_it(tokenizer):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1], SamplingParams(stop=[" is Paris"], max_tokens=50))
    ids = tokenizer.encode(" The capital is Paris, of course")
    head, rest = ids[:3], ids[3:]
    assert tokenizer.decode(head) == " The capital is"
    [held] = processor.process([core_output([sample(0, head)])])
    assert held.completions[0].text == " The capital"  # " is" could still become the stop string
    [stopped] = processor.process([core_output([sample(0, rest)])])
    assert stopped.finished and stopped.completions[0].finish_reason == "stop"
    assert stopped.completions[0].stop_reason == " is Paris" and stopped.completions[0].text == ""
    assert processor.output("r").outputs[0].text == " The capital"
    assert processor.take_aborts() == [("r", [0])] and processor.take_aborts() == []
    assert processor.process([core_output([sample(0, rest)])]) == []  # more in flight: ignored


class CountingTokenizer:
    """The real tokenizer, counting the ids each decode call is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.decoded_ids = tokenizer, 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded_ids += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id):
        return self.tokenizer.id_to_token(token_id)


def test_work_per_token_does_not_grow_with_the_output(tokenizer):
    counting = CountingTokenizer(tokenizer)
    processor = OutputProcessor(counting)
    processor.add_request("r", None, [1, 2, 3], SamplingParams(stop=["never appears"], max_tokens=None))
    text_ids = tokenizer.encode(" the mill grinds the grain, and the grain becomes flour." * 40)
    per_token = []
    for start in range(0, len(text_ids), 1):
        before = counting.decoded_ids
        [delta] = processor.process([core_output([sample(0, text_ids[start : start + 1])])])
        per_token.append(counting.decoded_ids - before)
        assert len(delta.completions[0].token_ids) == 1  # only the new token crosses, never the whole list
    assert len(text_ids) > 500
    first, last = per_token[:100], per_token[-100:]
    assert max(last) <= max(first) <= 16  # a short window, whatever the output's length


def test_the_token_that_stopped_a_sample_in_the_core_keeps_out_of_the_text(tokenizer):
    """EOS and stop token ids end a sample in the core; their text is not the answer's."""
    words, [newline] = tokenizer.encode(" foo"), tokenizer.encode("\n")
    for request_id, stop_token, stop_reason in (("eos", tokenizer.eos_token_id, None), ("id", newline, newline)):
        processor = OutputProcessor(tokenizer)
        processor.add_request(request_id, None, [1], SamplingParams(stop_token_ids=[newline], skip_special_tokens=False))
        out = EngineOutput(request_id, [SampleOutput(0, words + [stop_token], None, "stop", stop_reason)], True,
                           RequestMetrics(arrival_time=0.0), num_cached_tokens=0)
        [delta] = processor.process([out])
        assert delta.completions[0].text == " foo" and delta.completions[0].token_ids == words + [stop_token]
        assert delta.completions[0].stop_reason == stop_reason
