"""The recipe schema: every key is a typed field with a docstring (``metadata["doc"]``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ModelConfig", "DataSource", "DataConfig", "ComponentConfig", "OptimConfig", "TrainConfig",
    "EvalConfig", "WandbConfig", "TrainStage", "Recipe",
]


def doc(text: str, default: Any = None, *, choices: tuple[str, ...] = (), factory: Any = None,
        minimum: float | None = None) -> Any:
    meta = {"doc": text, "choices": choices, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ComponentConfig:
    """A component picked by name, with options: ``masking: last_assistant`` or
    ``objective: {name: cross_entropy, label_smoothing: 0.1}`` (keys beside ``name`` are options)."""

    name: str = doc("Registered component name.", "")
    options: dict[str, Any] = doc("Keyword options for the component.", factory=dict)


def component(name: str, text: str) -> Any:
    return doc(text, factory=lambda: ComponentConfig(name))


class _NamesComponents:
    """Code may build configs with plain names (``DataSource(format="alpaca")``), as recipes
    write them: each component field becomes a :class:`ComponentConfig`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, str) and f.type in ("ComponentConfig", ComponentConfig):
                setattr(self, f.name, ComponentConfig(value))
            elif isinstance(value, list) and f.type == "list[ComponentConfig]":
                setattr(self, f.name, [ComponentConfig(v) if isinstance(v, str) else v
                                       for v in value])


@dataclass
class ModelConfig:
    name_or_path: str = doc("Hub id, local directory, or `bundled:tiny-llama`.", "bundled:tiny-llama")
    tokenizer: str | None = doc("Tokenizer location when it differs from the model's.")
    init: str = doc("`pretrained` loads weights; `random` initialises from the config (seeded).",
                    "pretrained", choices=("pretrained", "random"))
    dtype: str = doc("Weights dtype when loading.", "auto",
                     choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = doc("Allow model/tokenizer code from the hub repository.", False)
    revision: str | None = doc("Hub revision (branch, tag or commit).")
    attn_implementation: str | None = doc("`sdpa`, `eager`, `flash_attention_2`, ...", "sdpa")
    gradient_checkpointing: bool = doc("Recompute activations in backward to save memory.", False)


@dataclass
class DataSource(_NamesComponents):
    path: str = doc("JSON/JSONL file, a directory of them, `bundled:data/...`, or a datasets hub id.", "")
    format: ComponentConfig = component(
        "auto", "Registered record format (alpaca, prompt_completion, messages, sharegpt, or a "
        "plugin's), or `auto` to tell it from each record's keys; options go to its `convert`.")
    fields: dict[str, str] = doc("Map canonical field names to this source's keys, e.g. "
                                 "{instruction: question, output: answer}.", factory=dict)
    weight: float = doc("Sampling weight relative to other sources (1.0 = each record once).", 1.0)
    split: str = doc("datasets split to read (hub ids and datasets directories).", "train")
    subset: str | None = doc("datasets configuration name (hub ids).")
    max_records: int | None = doc("Read at most this many records.")
    system_prompt: str | None = doc("System message added to conversations that have none.")


@dataclass
class DataConfig(_NamesComponents):
    train: list[DataSource] = doc("Training sources.", factory=list)
    validation: list[DataSource] = doc("Validation sources; empty = hold out `val_fraction`.",
                                       factory=list)
    val_fraction: float = doc("Fraction of training conversations held out for validation.", 0.0)
    max_length: int = doc("Maximum tokens per conversation.", 2048, minimum=1)
    overflow: ComponentConfig = component(
        "drop", "Registered overflow policy for longer conversations: `drop` (counted) or "
        "`truncate_turns` (keep the leading whole turns that fit); options go to its `fit`.")
    packing: bool = doc("Pack conversations into rows of `max_length` tokens (best-fit decreasing).",
                        True)
    group_by_length: bool = doc("Without packing, batch conversations of similar length.", True)
    batch_size: int = doc("Rows per micro-batch per device.", 8, minimum=1)
    on_bad_record: str = doc("`error` stops at the first bad record; `skip` counts and reports.",
                             "error", choices=("error", "skip"))
    num_proc: int = doc("Processes for tokenization (datasets.map).", 1, minimum=1)
    cache_dir: str | None = doc("Where tokenized data is cached (default: datasets' cache).")


@dataclass
class OptimConfig:
    lr: float = doc("Peak learning rate (AdamW).", 2e-5, minimum=0)
    weight_decay: float = doc("AdamW weight decay (not applied to norms and biases).", 0.0)
    betas: list[float] = doc("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = doc("AdamW epsilon.", 1e-8)
    warmup_steps: int = doc("Linear warmup steps (overrides warmup_ratio when > 0).", 0)
    warmup_ratio: float = doc("Warmup as a fraction of total optimizer steps.", 0.0)
    scheduler: str = doc("Decay after warmup.", "cosine", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = doc("Final learning rate as a fraction of `lr`.", 0.0)


@dataclass
class TrainConfig:
    seed: int = doc("Seed for model init, data order and everything else.", 0)
    output_dir: str = doc("Run directory (checkpoints, final model, summary).", "runs/{name}")
    loss_chunk_size: int = doc("Supervised positions projected to the vocabulary at a time "
                               "(0: all at once).", 1024, minimum=0)
    checkpoint_every_n_steps: int | None = doc("Also keep a resumable checkpoint every N steps "
                                               "(`checkpoints/step-N.ckpt`, all kept).",
                                               minimum=1)
    last_checkpoint_every_n_steps: int | None = doc(
        "Rewrite `checkpoints/last.ckpt` every N optimizer steps (default: "
        "`checkpoint_every_n_steps`); it is also written at the end of each epoch and of training.",
        minimum=1)
    last_checkpoint_every_n_minutes: float | None = doc(
        "Rewrite `checkpoints/last.ckpt` when this many minutes have passed since the last one, "
        "so that a crashed run loses at most that much (null: only steps and epoch ends).", 10.0,
        minimum=0)
    resume_from: str | None = doc("Checkpoint path, or `last` for this run directory's latest "
                                  "checkpoint (the W&B run continues too).")
    overwrite: bool = doc("Delete an earlier run in `output_dir` and start over (without it, a "
                          "run directory that holds a run is refused unless resuming).", False)
    save_final: bool = doc("save_pretrained the final model + tokenizer (with chat template).", True)


@dataclass
class EvalConfig(_NamesComponents):
    generate_samples: int = doc("Held-out conversations answered greedily after training and "
                                "scored with `metrics` against the reference.", 0, minimum=0)
    metrics: list[ComponentConfig] = doc(
        "Registered metrics of the generated answers (each a name or {name, options}); the "
        "summary reports each as `<name>` and `<name>_before`.",
        factory=lambda: [ComponentConfig("exact_match")])
    max_new_tokens: int = doc("Generation budget per answer.", 64, minimum=1)
    generator: ComponentConfig = component(
        "transformers", "Registered generation backend for the held-out answers (options go "
        "to its `build`: `batch_size` for transformers; `model`, `base_url`, `api_key_env`, ... "
        "for openai).")
    before_training: bool = doc("Also measure before training, for comparison.", True)


@dataclass
class WandbConfig:
    enabled: bool = doc("Log the run to Weights & Biases.", True)
    project: str = doc("W&B project.", "tempering")
    name: str | None = doc("W&B run name (default: the recipe name).")
    mode: str = doc("`offline` needs no account; `online` syncs live.", "offline",
                    choices=("offline", "online", "disabled"))
    tags: list[str] = doc("W&B tags.", factory=list)
    log_examples: int = doc("Decoded training examples logged as a table, trained spans marked.", 8)
    log_model: bool = doc("Upload the final model as a W&B artifact.", False)


@dataclass
class TrainStage(_NamesComponents):
    """A training stage: what is trained, on which data, how. In a recipe without ``stages``
    these keys sit at the top level (one training stage); with ``stages`` they are the
    defaults each training stage merges its own keys over."""

    kind: str = doc("Stage kind.", "train", choices=("train",))
    masking: ComponentConfig = component(
        "all_assistant", "Registered masking strategy; options go to its `select`.")
    train_on_eot: bool = doc("Train each turn's end-of-turn token.", True)
    append_stop_token: str | None = doc(
        "Append this token (and train it) after a final turn the template closes with no "
        "end-of-turn token (GLM-4 writes nothing after the last turn, so the model never learns "
        "to stop): `eos` for the tokenizer's EOS, or a token such as `<|user|>`. Note that "
        "input_ids then differ from apply_chat_template by that one token.")
    data: DataConfig = doc("Data sources and batching.", factory=DataConfig)
    objective: ComponentConfig = component(
        "cross_entropy", "Loss per supervised token; options go to its `per_token`.")
    optim: OptimConfig = doc("Optimizer and schedule.", factory=OptimConfig)
    train: TrainConfig = doc("Run-level settings.", factory=TrainConfig)
    eval: EvalConfig = doc("Evaluation by generation after training.", factory=EvalConfig)
    trainer: dict[str, Any] = doc("lightning.Trainer arguments (devices, strategy, precision, "
                                  "max_steps, accumulate_grad_batches, ...).", factory=dict)


@dataclass
class Recipe(TrainStage):
    """A run: the shared sections (models, template, tracking), and its stages."""

    name: str = doc("Run name.", "run")
    plugins: list[str] = doc("Extra plugin modules to register (`pkg.module`).", factory=list)
    model: ModelConfig = doc("The policy (the model trained) and the run's tokenizer.",
                             factory=ModelConfig)
    teacher: ModelConfig | None = doc(
        "The teacher model (role `teacher`, frozen) for an objective that needs one "
        "(distillation); it must share the policy's tokenizer.")
    chat_template: ComponentConfig = component(
        "tokenizer", "Registered template name, `tokenizer`, a `.jinja` path or inline Jinja; "
        "options are template variables (as `template_kwargs`).")
    template_kwargs: dict[str, Any] = doc("Extra variables for the template renderer.", factory=dict)
    allow_split_markers: bool = doc(
        "Accept a chat template (other than the tokenizer's own) whose markers the tokenizer "
        "splits into pieces, for a model that was trained with them as text. Without it such a "
        "template is refused; `check-template` lists the markers.", False)
    wandb: WandbConfig = doc("Run tracking.", factory=WandbConfig)
    stages: list[TrainStage] = doc(
        "The stages to run in order, each a mapping with `kind` and its own keys merged over "
        "the top-level ones (mappings merge, other values replace). Empty: one training stage "
        "of the top-level keys.", factory=list)
    rounds: int = doc("Run the stages this many times; each round trains on from the model "
                      "the previous one ended with.", 1, minimum=1)
