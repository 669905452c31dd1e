"""The recipe schema: every key is a typed field with a docstring (``metadata["doc"]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tempering.recipe.growth import EvolveConfig, SelfInstructConfig
from tempering.recipe.mixture import MixtureConfig, MixtureTask
from tempering.recipe.schema_base import (
    ComponentConfig,
    DataSource,
    _NamesComponents,
    component,
    doc,
)

__all__ = [
    "ModelConfig", "LoraConfig", "DataSource", "DataConfig", "ComponentConfig", "OptimConfig", "TrainConfig",
    "EvalConfig", "WandbConfig", "SamplingConfig", "GenerateConfig", "ScoreConfig", "FilterConfig",
    "SelfInstructConfig", "EvolveConfig", "MixtureConfig", "MixtureTask", "STAGE_KINDS", "Stage", "Recipe",
]


@dataclass
class LoraConfig:
    """LoRA adapters (``peft``): the model's weights stay frozen and low-rank updates train."""

    r: int = doc("Rank of each adapter (the update is B A with A: r x in, B: out x r).", 16,
                 minimum=1)
    alpha: float = doc("Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) "
                       "with `rslora`).", 32.0, minimum=0)
    dropout: float = doc("Dropout on the adapter's input, in training.", 0.05, minimum=0)
    target_modules: list[str] = doc(
        "Modules adapted, by name or name suffix (`q_proj`, `v_proj`, ...); `all-linear`: every "
        "linear layer but the output head.", factory=lambda: ["all-linear"])
    modules_to_save: list[str] = doc("Modules trained in full beside the adapters (e.g. "
                                     "`embed_tokens` for new tokens).", factory=list)
    rslora: bool = doc("Rank-stabilised scale alpha / sqrt(r).", False)
    load_in_4bit: bool = doc(
        "QLoRA: the frozen base is loaded in 4-bit NF4 with double quantization "
        "(`pip install 'tempering[qlora]'`, bitsandbytes), computing in `model.dtype` (set "
        "`bfloat16` on a GPU). The merged model at the end is the full-precision base plus the "
        "adapters, not the 4-bit weights.", False)
    merge: bool = doc(
        "At the end, `final/` holds the model with the adapters merged in (a plain model every "
        "stage and tool loads) and `final/adapter/` the adapters alone. False: `final/` holds "
        "only the adapters and the tokenizer; tempering loads such a folder as its base model "
        "with the adapters merged.", True)


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
    config_overrides: dict[str, Any] = doc(
        "With `init: random`, config keys set before the model is built (a smaller student of a "
        "family: `{hidden_size: 64, num_hidden_layers: 2}`).", factory=dict)
    lora: LoraConfig | None = doc(
        "Train LoRA adapters (`pip install 'tempering[peft]'`) instead of every weight: the "
        "policy only, under a single process or DDP.")


@dataclass
class DataConfig(_NamesComponents):
    train: list[DataSource] = doc("Training sources.", factory=list)
    validation: list[DataSource] = doc("Validation sources; empty = hold out `val_fraction`.",
                                       factory=list)
    val_fraction: float = doc("Fraction of training conversations held out for validation.", 0.0)
    max_length: int = doc("Maximum tokens per conversation.", 2048, minimum=1)
    overflow: ComponentConfig = component(
        "drop", "Registered overflow policy for longer conversations: `drop` (counted), "
        "`drop_oldest_turns` (the system message and the most recent whole turns that fit), "
        "`split_per_turn` (one example per trained assistant turn, each with the history that "
        "fits) or `truncate_turns` (the leading whole turns that fit); options go to its `fit`.")
    packing: bool = doc("Pack conversations into rows of `max_length` tokens (best-fit decreasing).",
                        True)
    group_by_length: bool = doc("Without packing, batch conversations of similar length.", True)
    batch_size: int = doc("Rows per micro-batch per device.", 8, minimum=1)
    on_bad_record: str = doc("`error` stops at the first bad record; `skip` counts and reports.",
                             "error", choices=("error", "skip"))
    num_proc: int | None = doc(
        "Processes for tokenization (datasets.map); null: one per 2,000 conversations, at most "
        "one per CPU core this process may use (so small data stays in one process).",
        minimum=1)
    cache_dir: str | None = doc("Where tokenized data is cached (default: datasets' cache).")
    mixture: MixtureConfig = doc(
        "Instruction tuning over a mixture of tasks (FLAN-style): their records become "
        "instructions in several phrasings, drawn by the mixing rates, besides `train`; their "
        "held-out records, phrasings and tasks are the validation data, scored per task.",
        factory=MixtureConfig)


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
    loss_chunk_size: int | None = doc(
        "Supervised positions projected to the vocabulary at a time (0: all at once; null: as "
        "many as `loss_chunk_mb` allows at the models' vocabulary).", minimum=0)
    teacher_top_k: int = doc(
        "0: the teacher runs online, next to the policy. k > 0: it runs once over the training "
        "and validation data before training, its k largest log-probabilities at every "
        "supervised position are cached with `datasets` (6 bytes each, keyed by the tokens and "
        "the teacher), and training reads them instead of loading the teacher.", 0, minimum=0)
    teacher_tail: str = doc(
        "With `teacher_top_k`, the teacher's mass outside its top k: `uniform` spreads it over "
        "the other tokens, `renormalize` drops it (the top k renormalized).", "uniform",
        choices=("uniform", "renormalize"))
    loss_chunk_mb: float = doc(
        "Memory budget of one chunk of logits when `loss_chunk_size` is null: positions per "
        "chunk = budget / (4 bytes x (policy vocabulary + teacher vocabulary)), so the chunk "
        "shrinks as the vocabulary grows (256 MB: 512 positions at 128k without a teacher). The "
        "loss's peak working memory is a small multiple of it (about 6x with jsd: the "
        "objective's float32 temporaries in the recomputed backward).",
        256.0, minimum=1)
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
    compile: bool = doc(
        "torch.compile the policy's decoder layers one by one (regional compilation: the "
        "layers share one compiled graph, so compiling costs one layer's time). Packed rows then "
        "attend through the mask (`packed_attention: auto` picks it; `documents` is refused).",
        False)
    packed_attention: str = doc(
        "How the documents of a packed row attend: `documents` runs causal attention on each "
        "document alone (no work on the blocks between documents; Llama, Mistral and Qwen 2/3 "
        "with SDPA and no sliding window), `mask` is transformers' block-diagonal mask over the "
        "whole row (or flash attention's varlen kernel when the model uses it), `auto` is "
        "`documents` on a CPU where the model allows it and `mask` elsewhere.", "auto",
        choices=("auto", "documents", "mask"))


@dataclass
class EvalConfig(_NamesComponents):
    generate_samples: int = doc("Held-out conversations answered greedily after training and "
                                "scored with `metrics` against the reference (with "
                                "`data.mixture`: this many per task and split).", 0, minimum=0)
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
    multi_turn: int = doc(
        "Held-out conversations evaluated turn by turn after training (and before): the loss "
        "and perplexity of every assistant turn by its index (teacher-forced), and every user "
        "turn answered greedily given the conversation so far (its reference answers, or the "
        "model's own where it has none), checked for stopping at the end-of-turn and for role "
        "confusion (writing another role's header, or speaking as the user).", 0, minimum=0)
    conversations: list[DataSource] = doc(
        "The conversations of `multi_turn`, read like data sources; conversations without "
        "answers (MT-Bench's questions) are answered turn by turn (empty: the validation "
        "conversations).", factory=list)
    max_turns: int = doc("`multi_turn` reports turns 1 to this; later ones count in the last.",
                         8, minimum=1)
    prompts: list[DataSource] = doc(
        "An `eval` stage's held-out prompts, read like `generate.prompts` (empty: "
        "`data.validation`).", factory=list)
    max_prompts: int | None = doc("An `eval` stage answers at most this many prompts.", minimum=1)
    pass_at: int = doc("An `eval` stage's N for pass@N: samples per prompt, drawn with "
                       "`generate.sampling` (its temperature, top_p, top_k, seed).", 8, minimum=1)
    pass_score: float = doc("A sample passes when its score (`score.scorers`) is at least "
                            "this.", 1.0)


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
class SamplingConfig:
    n: int = doc("Completions per prompt.", 1, minimum=1)
    temperature: float = doc("Sampling temperature (0: greedy).", 1.0, minimum=0)
    top_p: float = doc("Nucleus sampling mass.", 1.0, minimum=0)
    top_k: int = doc("Sample from the top_k most likely tokens (0: all).", 0, minimum=0)
    max_new_tokens: int = doc("Budget per completion.", 64, minimum=1)
    seed: int | None = doc("Sampling seed; each chunk of prompts is seeded from it and its "
                           "index, so a resumed or sharded stage draws the same samples "
                           "(null: `train.seed`).")
    stop: list[str] = doc("Strings that end a completion, besides the template's end-of-turn.",
                          factory=list)


@dataclass
class GenerateConfig(_NamesComponents):
    prompts: list[DataSource] = doc(
        "Prompt sources, read like data sources: each conversation up to its last assistant "
        "turn is a prompt, and that turn's content is its reference answer (for verifiers).",
        factory=list)
    max_prompts: int | None = doc("Use at most this many prompts (the first ones).", minimum=1)
    generator: ComponentConfig = component(
        "transformers", "Registered generation backend (options go to its `build`).")
    sampling: SamplingConfig = doc("How completions are sampled.", factory=SamplingConfig)
    chunk_size: int = doc("Prompts generated, then appended and synced to disk, at a time: a "
                          "killed stage resumes after its last whole chunk.", 16, minimum=1)
    devices: int = doc("Processes the chunks are sharded over (one per GPU on `gpu`).", 1,
                       minimum=1)
    accelerator: str = doc("Where an in-process backend generates.", "auto",
                           choices=("auto", "cpu", "gpu"))
    split_reasoning: bool = doc("A completion that opens with `<think>...</think>` keeps the "
                                "think block as the message's `reasoning_content`.", True)


@dataclass
class ScoreConfig(_NamesComponents):
    scorers: list[ComponentConfig] = doc(
        "Registered scorers (each a name or {name, options}); a sample keeps each score under "
        "the scorer's name and its `score` is their weighted sum.", factory=list)
    weights: list[float] = doc("One weight per scorer (empty: 1 each).", factory=list)
    chunk_size: int = doc("Samples scored, then appended and synced to disk, at a time.", 64,
                          minimum=1)


@dataclass
class FilterConfig(_NamesComponents):
    filters: list[ComponentConfig] = doc(
        "Registered sample filters, applied in this order to the whole candidate pool (each "
        "sees what the previous ones kept).", factory=list)


STAGE_KINDS = ("train", "generate", "score", "filter", "eval", "self_instruct", "instances",
               "evolve")


@dataclass
class Stage(_NamesComponents):
    """A training stage: what is trained, on which data, how. In a recipe without ``stages``
    these keys sit at the top level (one training stage); with ``stages`` they are the
    defaults each training stage merges its own keys over."""

    kind: str = doc("Stage kind: `train`, `generate` (samples from a model), `score`, "
                    "`filter`, `eval` (pass@1 and pass@N on held-out prompts), "
                    "`self_instruct` (grow instructions from seed tasks), `instances` (inputs "
                    "and outputs for them), `evolve` (Evol-Instruct).", "train",
                    choices=STAGE_KINDS)
    id: str | None = doc("The stage's name, which `input`, `model_from` and `stage:` data "
                         "paths refer to (default: its kind).")
    input: str | None = doc("The stage whose samples a `score` or `filter` stage reads (an id; "
                            "default: the stage before it).")
    model_from: str = doc("The model this stage starts from (trains, generates or is evaluated "
                          "with): `latest` (the model the latest training stage ended with; "
                          "before one, `model`), `recipe` (this stage's own `model`), or a "
                          "training stage's id (its latest final model).", "latest")
    in_rounds: list[int] = doc("The rounds this stage runs in (empty: every round), e.g. [1] "
                               "for an initial SFT.", factory=list)
    model: ModelConfig = doc("The policy (the model trained) and the run's tokenizer.",
                             factory=ModelConfig)
    chat_template: ComponentConfig = component(
        "tokenizer", "Registered template name, `tokenizer`, a `.jinja` path or inline Jinja; "
        "options are template variables (as `template_kwargs`).")
    template_kwargs: dict[str, Any] = doc("Extra variables for the template renderer.", factory=dict)
    allow_split_markers: bool = doc(
        "Accept a chat template (other than the tokenizer's own) whose markers the tokenizer "
        "splits into pieces, for a model that was trained with them as text. Without it such a "
        "template is refused; `check-template` lists the markers.", False)
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
    generate: GenerateConfig = doc("Generation (`generate` stages; `eval` stages use its "
                                   "generator and sampling).", factory=GenerateConfig)
    score: ScoreConfig = doc("Scoring (`score` and `eval` stages).", factory=ScoreConfig)
    filter: FilterConfig = doc("Sample filters (`filter` stages).", factory=FilterConfig)
    self_instruct: SelfInstructConfig = doc(
        "Self-Instruct (`self_instruct` and `instances` stages).", factory=SelfInstructConfig)
    evolve: EvolveConfig = doc("Evol-Instruct (`evolve` stages).", factory=EvolveConfig)


@dataclass
class Recipe(Stage):
    """A run: the shared sections (models, template, tracking), and its stages."""

    name: str = doc("Run name.", "run")
    plugins: list[str] = doc("Extra plugin modules to register (`pkg.module`).", factory=list)
    teacher: ModelConfig | None = doc(
        "The teacher model (role `teacher`, frozen) for an objective that needs one "
        "(distillation); it must share the policy's tokenizer.")
    wandb: WandbConfig = doc("Run tracking.", factory=WandbConfig)
    stages: list[Stage] = doc(
        "The stages to run in order, each a mapping with `kind` and its own keys merged over "
        "the top-level ones (mappings merge, other values replace). Empty: one training stage "
        "of the top-level keys.", factory=list)
    rounds: int = doc("Run the stages this many times; each round trains on from the model "
                      "the previous one ended with.", 1, minimum=1)
