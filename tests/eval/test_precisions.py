import pytest

from tokenmill.config import EngineConfig
from tokenmill.eval.precisions import PRECISIONS, parse_precisions


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_is_a_valid_engine_configuration(precision):
    EngineConfig.create(**PRECISIONS[precision])


def test_precisions_parse_in_the_order_given_without_repeats():
    assert parse_precisions("bfloat16, float32,bfloat16") == ["bfloat16", "float32"]
    with pytest.raises(ValueError, match="fp7"):
        parse_precisions("float32,fp7")
