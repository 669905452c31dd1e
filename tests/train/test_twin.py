"""A tiny twin gets the logit-parity verdict of the model it stands for."""

from __future__ import annotations

import pytest
import transformers

from tempering.train.logit_check import UnsupportedModelError, check_logit_parity
from tempering.train.twin import tiny_twin

# (model type, config overrides of a "real" size, refused?)
CASES = [
    ("llama", {}, False),
    ("gemma2", {"final_logit_softcapping": 3.0}, False),  # a knob the projection applies
    ("cohere", {"logit_scale": 0.25}, False),
    ("roberta", {"is_decoder": True}, True),  # a dense + layer norm before the head
]


@pytest.mark.parametrize(("model_type", "overrides", "refused"), CASES)
def test_the_twin_is_refused_exactly_when_the_model_is(model_type, overrides, refused) -> None:
    config = transformers.AutoConfig.for_model(
        model_type, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
        num_attention_heads=8, vocab_size=1000, **overrides)
    twin = tiny_twin(config)
    assert twin is not None and type(twin).__name__.lower().startswith(model_type)
    assert twin.config.hidden_size < 256 and twin.config.num_hidden_layers < 6
    for name, value in overrides.items():
        assert getattr(twin.config, name) == value  # knobs keep their real values
    for model in (twin, transformers.AutoModelForCausalLM.from_config(config)):
        if refused:
            with pytest.raises(UnsupportedModelError):
                check_logit_parity(model)
        else:
            check_logit_parity(model)


def test_a_config_that_cannot_be_shrunk_gives_no_twin() -> None:
    class Odd(transformers.PretrainedConfig):
        model_type = "not-registered-anywhere"

    assert tiny_twin(Odd()) is None
