"""The engine core's delta tracking: each report carries only what a request gained since the last."""

from tokenmill.engine.core import DeltaTracker
from tokenmill.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput


def output(texts: list[str], tokens: list[list[int]], finished: bool = False) -> RequestOutput:
    completions = [
        CompletionOutput(i, text, ids, [{t: Logprob(-0.5, 1)} for t in ids], "length" if finished else None)
        for i, (text, ids) in enumerate(zip(texts, tokens))
    ]
    return RequestOutput("r", None, [1, 2], completions, finished, RequestMetrics(arrival_time=0.0))


def test_deltas_carry_only_what_is_new_for_each_sample():
    tracker = DeltaTracker()
    first = tracker.delta(output(["He", "A"], [[5], [7]]))
    assert [(c.text, c.token_ids) for c in first.completions] == [("He", [5]), ("A", [7])]
    second = tracker.delta(output(["Hello", "A"], [[5, 6], [7, 8]]))  # sample 1's text held back
    assert [(c.text, c.token_ids) for c in second.completions] == [("llo", [6]), ("", [8])]
    assert [list(lp) for lp in second.completions[0].logprobs] == [[6]]
    last = tracker.delta(output(["Hello!", "AB"], [[5, 6, 9], [7, 8, 3]], finished=True))
    assert [(c.text, c.token_ids, c.finish_reason) for c in last.completions] == [("!", [9], "length"),
                                                                                  ("B", [3], "length")]
    assert last.finished
    again = tracker.delta(output(["Hello!"], [[5, 6, 9]]))  # a finished request is forgotten
    assert again.completions[0].text == "Hello!"


def test_an_aborted_request_is_forgotten():
    tracker = DeltaTracker()
    tracker.delta(output(["abc"], [[1, 2]]))
    tracker.forget("r")
    assert tracker.delta(output(["abcd"], [[1, 2, 3]])).completions[0].token_ids == [1, 2, 3]
