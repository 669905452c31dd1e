"""Every micro-batch the DataModule serves has exactly the keys the Batch contract documents."""

from __future__ import annotations

import pytest

from tempering.data.batch import BATCH_KEYS, Batch
from tempering.data.packing import empty_batch
from tempering.recipe import load_recipe

WINDOW = {"num_window_tokens", "num_window_all_tokens"}


def test_every_key_is_documented() -> None:
    import inspect

    source = inspect.getsource(__import__("tempering.data.batch", fromlist=["x"]))
    for key in BATCH_KEYS:
        assert f'    {key}: Tensor\n    """' in source, key  # a docstring under each key
    assert Batch.__required_keys__ == {"input_ids", "labels", "num_tokens", "num_supervised",
                                       "num_padding"}


@pytest.mark.parametrize("packing", [True, False])
def test_served_batches_follow_the_contract(tiny_recipe, pm, registry, packing) -> None:
    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer

    recipe = load_recipe(tiny_recipe, [f"data.packing={str(packing).lower()}"])
    dm = ConversationDataModule(recipe, load_fast_tokenizer(recipe.model), pm, registry)
    dm.setup("fit")
    layout = "position_ids" if packing else "attention_mask"
    batches = [*dm.train_dataloader(), *dm.val_dataloader()]
    assert batches
    for batch in batches:
        assert set(batch) <= BATCH_KEYS and Batch.__required_keys__ <= set(batch)
        assert layout in batch and WINDOW <= set(batch)
        assert batch[layout].shape == batch["input_ids"].shape == batch["labels"].shape
        assert int(batch["num_tokens"]) + int(batch["num_padding"]) == batch["input_ids"].numel()
    empty = empty_batch(0, packed=packing)
    assert set(empty) <= BATCH_KEYS and Batch.__required_keys__ <= set(empty) and layout in empty
