"""SamplingParams refuses out-of-range values at construction, naming the field."""

import pytest

from tokenmill import SamplingParams
from tokenmill.sampling_params import SamplingParamsError


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_out_of_range_values_raise_naming_the_field(kwargs, param):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(**kwargs)
    assert error.value.param == param
    assert param in str(error.value)


def test_stop_accepts_one_string_or_a_list():
    assert SamplingParams(stop="\n").stop_strings == ("\n",)
    assert SamplingParams(stop=["a", "b"]).stop_strings == ("a", "b")
    assert SamplingParams(top_p=1.0, temperature=0).is_greedy
