"""kv_transfer_params as a request sends it: the fields vLLM's proxies use, anything else refused."""

import pytest

from tokenmill.kv_transfer.params import KVTransferParams


def test_the_two_sides_params_read_back():
    assert KVTransferParams.from_json({"do_remote_decode": True}).do_remote_decode
    pulled = KVTransferParams.from_json({"transfer_id": "12-3", "num_tokens": 40})
    assert (pulled.transfer_id, pulled.num_tokens, pulled.do_remote_decode) == ("12-3", 40, False)
    assert KVTransferParams.from_json(pulled.to_json()) == pulled


@pytest.mark.parametrize("body, message", [
    ({"remote_host": "x"}, "unknown fields: remote_host"),
    ({"transfer_id": 7}, "transfer_id must be a string"),
    ({"transfer_id": "a", "num_tokens": -1}, "num_tokens must be a non-negative integer"),
])  # fmt: skip
def test_malformed_params_are_refused(body, message):
    with pytest.raises(ValueError, match=message):
        KVTransferParams.from_json(body)
