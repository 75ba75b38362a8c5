"""Bad input gets a clear exception naming the problem, and leaves the engine as it was."""

import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.engine.engine import InvalidRequestError
from tokenmill.model.gguf_file import GGUFError
from tokenmill.sampling_params import SamplingParamsError


def test_empty_prompt_is_refused(llm):
    for prompt in ("", {"prompt_token_ids": []}):
        with pytest.raises(InvalidRequestError, match="empty") as error:
            llm.generate(prompt, use_tqdm=False)
        assert error.value.param == "prompt"


def test_prompt_longer_than_the_context_is_refused(make_llm):
    llm = make_llm(max_model_len=64)
    with pytest.raises(InvalidRequestError, match="64") as error:
        llm.generate({"prompt_token_ids": [42] * 64}, use_tqdm=False)
    assert error.value.param == "prompt"


def test_token_ids_outside_the_vocabulary_are_refused(llm):
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate({"prompt_token_ids": [1, 2, 10**9]}, use_tqdm=False)


def test_a_bad_request_in_a_batch_adds_none_of_it(llm):
    """The valid prompts before the bad one are withdrawn: nothing runs, no block is held."""
    with pytest.raises(InvalidRequestError):
        llm.generate(["Hello", "World", ""], use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    [out] = llm.generate("Hello", SamplingParams(max_tokens=2), use_tqdm=False)  # still serving
    assert len(out.outputs[0].token_ids) == 2


@pytest.mark.parametrize("kwargs,param", [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                          ({"top_p": 1.01}, "top_p")])
def test_sampling_values_out_of_range_are_refused(kwargs, param):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(**kwargs)
    assert error.value.param == param


def test_unknown_model_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        LLM(model=tmp_path / "no-such-model.gguf")


def test_corrupt_gguf_is_refused(tmp_path):
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 1000)
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        LLM(model=path)


def test_truncated_gguf_is_refused(tmp_path, gguf_path):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(gguf_path.read_bytes()[: gguf_path.stat().st_size // 2])
    with pytest.raises(GGUFError):
        LLM(model=path)


def test_engine_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        LLM(block_size=0)
    with pytest.raises(ValueError, match="attention_backend"):
        LLM(attention_backend="fast")


def test_prompt_rows_are_for_one_sample(llm):
    with pytest.raises(InvalidRequestError, match="n = 1") as error:
        llm.engine.add_request([1, 2, 3], SamplingParams(n=2), returns_prompt_rows=True)
    assert error.value.param == "n" and not llm.engine.has_unfinished_requests()
