"""The LightningDataModule: sources -> conversations -> tokens -> packed, rank-aware batches."""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from tempering.chat.encoding import IGNORE_INDEX, ConversationEncoder
from tempering.data.batch import Batch
from tempering.data.packing import (
    collate_packed,
    collate_padded,
    empty_batch,
    plan_epoch,
    window_totals,
)
from tempering.data.sources import BadRecordLog, Conversation, DataError, load_conversations
from tempering.data.tokenization import auto_num_proc, tokenize_conversations
from tempering.recipe import Recipe

__all__ = ["ConversationDataModule", "PlanLoader", "recipe_encoder"]


def recipe_encoder(recipe: Recipe, tokenizer: Any, registry: Any) -> ConversationEncoder:
    """The conversation encoder a recipe describes (template, masking, end-of-turn, kwargs)."""
    template, masking = recipe.chat_template, recipe.masking
    return ConversationEncoder(tokenizer, chat_template=template.name,
                               masking=masking.name, masking_options=masking.options,
                               train_on_eot=recipe.train_on_eot, registry=registry,
                               template_kwargs={**recipe.template_kwargs, **template.options},
                               append_stop_token=recipe.append_stop_token,
                               allow_split_markers=recipe.allow_split_markers)


@rank_zero_only
def _report_split_markers(encoder: ConversationEncoder) -> None:
    """Say once which markers the template writes as text the tokenizer splits."""
    listed = ", ".join(str(m) for m in encoder.split_markers)
    print(f"tempering: note: template {encoder.template.name!r} writes {listed} as text that "
          "the tokenizer splits into pieces; the model learns them as text", file=sys.stderr)


@rank_zero_only
def _report_skipped(log: BadRecordLog) -> None:
    """Say when reading ends what skip mode set aside (the summary and W&B keep it too)."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in log.counts.most_common())
    print(f"tempering: skipped {log.total} records ({kinds}); data.on_bad_record: error stops at "
          "the first one and names its file, line and field", file=sys.stderr)


class PlanLoader:
    """Iterates this rank's micro-batches of an epoch plan; resumable mid-epoch.

    Lightning saves ``state_dict()`` in checkpoints and restores it before iterating, so a
    resumed run continues with the next unseen micro-batch of the same epoch.
    """

    def __init__(self, dm: ConversationDataModule, dataset: Any, *, train: bool) -> None:
        self.dm, self.dataset, self.train = dm, dataset, train
        self.lengths: list[int] = dataset["length"][:]
        self.supervised: list[int] = dataset["num_supervised"][:]
        self._resume: dict[str, int] | None = None
        self._cached: tuple[tuple[int, int, int], list[list[list[int]]]] | None = None

    def _world(self) -> tuple[int, int, int]:
        trainer = self.dm.trainer
        if trainer is None:
            return 0, 1, 1
        accumulate = trainer.accumulate_grad_batches if self.train else 1
        return trainer.global_rank, trainer.world_size, accumulate

    def _epoch(self) -> int:
        return self.dm.trainer.current_epoch if (self.train and self.dm.trainer) else 0

    def _plan(self) -> list[list[list[int]]]:
        return self.plan(self._world()[1])

    def _whole_windows(self) -> int:
        """DeepSpeed counts accumulation windows across epochs: each epoch is whole windows."""
        trainer = self.dm.trainer
        if not self.train or trainer is None or not trainer.strategy.handles_gradient_accumulation:
            return 1
        return int(trainer.accumulate_grad_batches)

    def plan(self, world_size: int) -> list[list[list[int]]]:
        """This epoch's global plan of micro-batches for ``world_size`` ranks."""
        key = (self._epoch(), world_size, self._whole_windows())
        if self._cached is None or self._cached[0] != key:
            d = self.dm.recipe.data
            plan = plan_epoch(self.lengths, batch_size=d.batch_size, max_length=d.max_length,
                              packing=d.packing, group_by_length=d.group_by_length and self.train,
                              seed=self.dm.recipe.train.seed, epoch=key[0], world_size=key[1],
                              whole_windows=key[2])
            self._cached = (key, plan)
        return self._cached[1]

    def __len__(self) -> int:
        return len(self._plan()) // self._world()[1]

    def __iter__(self) -> Iterator[Batch]:
        rank, world, accumulate = self._world()
        plan = self._plan()
        totals = window_totals(plan, self.supervised, world_size=world, accumulate=accumulate)
        all_tokens = window_totals(plan, self.lengths, world_size=world, accumulate=accumulate)
        local = list(range(rank, len(plan), world))
        start = 0
        if self._resume and self._resume["epoch"] == self._epoch():
            start = self._resume["consumed"]
        self._resume = None
        for j in range(start, len(local)):
            m = local[j]
            batch = self.dm.collate(plan[m], self.dataset)
            batch["num_window_tokens"] = torch.tensor(totals[m])
            batch["num_window_all_tokens"] = torch.tensor(all_tokens[m])
            yield batch

    def state_dict(self) -> dict[str, int]:
        trainer = self.dm.trainer
        if not self.train or trainer is None:
            return {}
        # micro-batches whose training step ran this epoch (saved after on_train_batch_end)
        progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "consumed": progress.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self.train and state:
            self._resume = dict(state)


class ConversationDataModule(pl.LightningDataModule):
    """Reads the recipe's sources, tokenizes them exactly, and serves packed batches.

    Args:
        recipe: the run's recipe.
        tokenizer: a fast tokenizer.
        plugin_manager: the run's PluginManager (for ``format_example``).
        registry: the component registry (template and masking lookup).
    """

    def __init__(self, recipe: Recipe, tokenizer: Any, plugin_manager: Any, registry: Any) -> None:
        super().__init__()
        self.recipe, self.tokenizer, self.pm, self.registry = recipe, tokenizer, plugin_manager, registry
        self.encoder = recipe_encoder(recipe, tokenizer, registry)
        if self.encoder.split_markers:
            _report_split_markers(self.encoder)
        self.bad_records = BadRecordLog()
        self.train_data: Any = None
        self.val_data: Any = None
        self.val_conversations: list[Conversation] = []
        self.stop_token_ids: list[int] = []  # the trained end-of-turn tokens, most frequent first
        self._train_loader: PlanLoader | None = None
        self._prepared = False
        self._stats: dict[str, Any] = {}
        self._teacher_cache: dict[str, Any] = {}
        self._turn_conversations: list[Conversation] | None = None
        self.turn_bad_records = BadRecordLog()  # of eval.conversations
        self._train_too_long = 0

    # -- Lightning hooks --------------------------------------------------------------------

    def prepare_data(self) -> None:
        if not self._prepared:
            self._build()  # fills the tokenization cache on local rank 0

    def setup(self, stage: str | None = None) -> None:
        if not self._prepared:
            self._build()

    def train_dataloader(self) -> PlanLoader:
        self._train_loader = PlanLoader(self, self.train_data, train=True)
        return self._train_loader

    def val_dataloader(self) -> Any:
        return PlanLoader(self, self.val_data, train=False) if self.val_data is not None else []

    # -- building ---------------------------------------------------------------------------

    def _read(self, sources: list[Any]) -> list[Conversation]:
        d = self.recipe.data
        return load_conversations(sources, self.pm.hook.format_example, self.registry,
                                  on_bad_record=d.on_bad_record, seed=self.recipe.train.seed,
                                  log=self.bad_records)

    def _tokenize(self, conversations: list[Conversation], desc: str) -> Any:
        d = self.recipe.data
        return tokenize_conversations(
            conversations, self.encoder, max_length=d.max_length,
            overflow=self.registry.get("overflow_policy", d.overflow.name),
            overflow_options=d.overflow.options,
            on_bad_record=d.on_bad_record, log=self.bad_records,
            num_proc=d.num_proc or auto_num_proc(len(conversations)),
            cache_dir=d.cache_dir, desc=desc)

    def _build(self) -> None:
        d = self.recipe.data
        self.bad_records = BadRecordLog()
        train = self._read(d.train)
        val = self._read(d.validation) if d.validation else []
        if not val and d.val_fraction > 0:
            rng = random.Random(self.recipe.train.seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            cut = max(1, int(len(train) * d.val_fraction))
            held = set(order[:cut])
            val = [c for i, c in enumerate(train) if i in held]
            train = [c for i, c in enumerate(train) if i not in held]
        mixture = self._mixture()
        if mixture is not None:
            train, val = train + mixture.train, val + mixture.evals
        records = len(train) + self.bad_records.total  # read from the training sources
        if not train:
            raise self._no_data(records, 0)
        before = self.bad_records.counts.get("too_long", 0)
        self.train_data = self._tokenize(train, "Tokenizing train")
        self._train_too_long = self.bad_records.counts.get("too_long", 0) - before
        if len(self.train_data) == 0:
            raise self._no_data(records, len(train))
        self.val_conversations = val
        self.val_data = self._tokenize(val, "Tokenizing validation") if val else None
        if self.recipe.teacher is not None and self.recipe.train.teacher_top_k:
            self._cache_teacher()
        # columns as lists: iterating a datasets Column reads one row at a time
        lengths, supervised = self.train_data["length"][:], self.train_data["num_supervised"][:]
        stops = Counter(i for ids in self.train_data["stop_ids"][:] for i in ids)
        self.stop_token_ids = [i for i, _ in stops.most_common()]
        if self.bad_records.total:
            _report_skipped(self.bad_records)
        self._stats = {
            "train_conversations": len(lengths),
            "val_conversations": 0 if self.val_data is None else len(self.val_data),
            "train_tokens": int(sum(lengths)),
            "train_supervised_tokens": int(sum(supervised)),
            "supervised_ratio": sum(supervised) / max(1, sum(lengths)),
            "skipped_records": dict(self.bad_records.counts),
            "overflow": self._overflow_counts(),
            # which tokens end the trained turns, and how many trained turns end with none
            "end_of_turn_tokens": {self.tokenizer.convert_ids_to_tokens(i): n
                                   for i, n in stops.most_common()},
            "turns_without_end_of_turn": int(sum(self.train_data["unterminated"][:])),
            "template_split_markers": {m.marker: m.pieces for m in self.encoder.split_markers},
            **({"mixture": mixture.report} if mixture is not None else {}),
        }
        self._prepared = True

    def turn_conversations(self) -> list[Conversation]:
        """The conversations of ``eval.multi_turn``: ``eval.conversations`` (read once; a
        conversation without answers is a prompt), or else the validation conversations."""
        if not self.recipe.eval.conversations:
            return self.val_conversations
        if self._turn_conversations is None:
            self._turn_conversations = load_conversations(
                self.recipe.eval.conversations, self.pm.hook.format_example, self.registry,
                on_bad_record=self.recipe.data.on_bad_record, seed=self.recipe.train.seed,
                log=self.turn_bad_records, require_assistant=False)
            if self.turn_bad_records.total:
                _report_skipped(self.turn_bad_records)
        return self._turn_conversations

    def _mixture(self) -> Any:
        """The ``data.mixture`` tasks' training and tagged held-out conversations, or None."""
        from tempering.data.mixture import build_mixture

        d = self.recipe.data
        if not d.mixture.tasks:
            return None
        return build_mixture(d.mixture, self.registry, seed=self.recipe.train.seed,
                             on_bad_record=d.on_bad_record, log=self.bad_records)

    def _overflow_counts(self) -> dict[str, Any]:
        """What ``data.overflow`` did to the training conversations over ``max_length``."""
        rows = [r for r in self.train_data["overflow_rows"][:] if r]
        return {"policy": self.recipe.data.overflow.name, "fitted": len(rows),
                "examples": int(sum(rows)), "dropped": self._train_too_long,
                "turns_dropped": int(sum(self.train_data["turns_dropped"][:]))}

    def _cache_teacher(self) -> None:
        """Offline distillation: the teacher's top-k at every supervised position, computed
        once (the teacher is loaded only then) and read back by later runs and other ranks."""
        from tempering.models import load_model_config
        from tempering.train.teacher_cache import attach_teacher_cache

        recipe, teacher = self.recipe, None

        def load() -> Any:
            nonlocal teacher
            if teacher is None:
                import torch

                teacher = self.pm.hook.load_model(role="teacher", config=recipe.teacher,
                                                  seed=recipe.train.seed).eval()
                teacher.to("cuda" if torch.cuda.is_available() else "cpu")
            return teacher

        vocab = load_model_config(recipe.model).get_text_config(decoder=True).vocab_size
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        import datasets

        cache = Path(recipe.data.cache_dir or datasets.config.HF_DATASETS_CACHE) / "tempering"
        self.train_data, stats = attach_teacher_cache(self.train_data, recipe, load, vocab, pad,
                                                      cache, "train")
        self._teacher_cache = {"train": stats}
        if self.val_data is not None:
            self.val_data, self._teacher_cache["validation"] = attach_teacher_cache(
                self.val_data, recipe, load, vocab, pad, cache, "validation")

    def _no_data(self, records: int, readable: int) -> DataError:
        """Nothing to train on: say how much was read and why each record was set aside."""
        d = self.recipe.data
        why = {"too_long": f"longer than data.max_length {d.max_length}"}
        kinds = "; ".join(f"{kind}: {n}" + (f" ({why[kind]})" if kind in why else "")
                          for kind, n in self.bad_records.counts.most_common()) or "none"
        return DataError(f"no training conversation is usable: {records} records read from "
                         f"data.train, {readable} readable; set aside: {kinds}")

    # -- batches ----------------------------------------------------------------------------

    def collate(self, rows: list[list[int]], data: Any) -> Batch:
        """One micro-batch (a :class:`~tempering.data.batch.Batch`, without the window totals
        the loader adds) from ``rows`` of example indices into ``data``."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if not rows:
            empty = empty_batch(pad, packed=self.recipe.data.packing)
            if "teacher_ids" in data.column_names:  # nothing supervised: no cached rows
                self._add_cached_teacher(empty, [])
            return cast(Batch, empty)
        if self.recipe.data.packing:
            examples = [[data[i] for i in row] for row in rows]
            batch = collate_packed(examples, pad)
            tokens = sum(len(e["input_ids"]) for row in examples for e in row)
        else:
            batch = collate_padded([data[row[0]] for row in rows], pad)
            tokens = int(batch["attention_mask"].sum())
        if "teacher_ids" in data.column_names:
            self._add_cached_teacher(batch, [data[i] for row in rows for i in row])
        real = int((batch["labels"] != IGNORE_INDEX).sum())
        batch["num_tokens"] = torch.tensor(tokens)
        batch["num_supervised"] = torch.tensor(real)
        batch["num_padding"] = torch.tensor(batch["input_ids"].numel() - tokens)
        return cast(Batch, batch)

    def _add_cached_teacher(self, batch: Any, examples: list[dict[str, Any]]) -> None:
        """The cached top-k of every supervised position, in the order the loss selects the
        positions (row by row, each row's examples in order, each in position order)."""
        k = self.recipe.train.teacher_top_k
        ids = [i for e in examples for i in e["teacher_ids"]]
        lps = [v for e in examples for v in e["teacher_logprobs"]]
        batch["teacher_topk_ids"] = torch.tensor(ids, dtype=torch.int32).view(-1, k)
        batch["teacher_topk_logprobs"] = torch.tensor(lps, dtype=torch.float16).view(-1, k)
        expected = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if batch["teacher_topk_ids"].shape[0] != expected:
            raise RuntimeError(f"cached teacher rows {batch['teacher_topk_ids'].shape[0]} != "
                               f"{expected} supervised positions: the cache is misaligned")

    def empty_micro_batches(self, world_size: int) -> int:
        """Empty micro-batches that complete the last round of ranks in an epoch of training."""
        loader = self._train_loader or PlanLoader(self, self.train_data, train=True)
        return sum(not b for b in loader.plan(world_size))

    def stats(self) -> dict[str, Any]:
        """Dataset statistics for the run summary (computed once, when the data is built)."""
        stats = dict(self._stats)
        if self._teacher_cache:
            stats["teacher_cache"] = self._teacher_cache
        return stats
