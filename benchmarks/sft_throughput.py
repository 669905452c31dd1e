"""SFT throughput, tempering vs TRL's SFTTrainer, side by side on one machine in one run.

Each framework trains in its own fresh subprocess (its own imports, caches and peak memory) with
the same thread count, the same model (the bundled tiny Llama, random init with seed 0, float32,
SDPA attention), the same data (alpaca records and ShareGPT conversations from ``../shared/data``,
rendered with ChatML, conversations over 512 tokens dropped), loss on assistant tokens only,
packing, the same AdamW / learning-rate schedule and the same number of optimizer steps.

    pip install -e ".[bench]"
    python benchmarks/sft_throughput.py [--steps 400] [--out benchmarks/results]

Throughput is timed from the end of optimizer step ``--warmup`` to the end of the last step and
counted on the batches actually fed to the model: tokens = non-padding input ids, supervised =
labels != -100 after the next-token shift, padding = pad positions / all input positions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ModelShape, gemm_flops_per_s, optimizer_mib, rss_mib, tensor_mib  # noqa: E402

from tempering.train.packed_attention import document_bounds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # read in place, never copied into the repository
MODEL_DIR = REPO / "framework" / "assets" / "tiny-llama"
FRAMEWORKS = ("tempering", "trl")
PAD_ID = 0  # <|pad|>: the tiny tokenizer's pad token, used by both frameworks

# ChatML with the {% generation %} markers TRL's assistant_only_loss needs: the assistant's content
# and its <|im_end|> are trained; the role header and the newline after <|im_end|> are not. It
# renders the same text as tempering's `chatml` (and the tokenizer's own template); token ids and
# trained positions of all 5,498 usable default conversations were checked identical to tempering's.
CHATML_TRAINING = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# -- measuring, inside a child -------------------------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Meter:
    """What each optimizer step fed to the model and when it ended; the same for both."""

    def __init__(self, warmup: int, started: float) -> None:
        self.warmup, self.started, self.t_init = warmup, started, time.perf_counter()
        self.tokens = self.supervised = self.positions = self.last_step = 0
        self.t_warm = self.t_last = self.t_train = self.peak_setup = self.rss_start = 0.0
        self.flops = self.t_first = 0.0
        self.losses: list[float] = []
        self.peak_reset = False
        self.shape: ModelShape | None = None
        self.memory: dict[str, float] = {}

    def model_ready(self, model: Any) -> None:
        if self.shape is None:
            self.shape = ModelShape(model)
            self.memory["weights_mib"] = tensor_mib(model.parameters())

    def gradients(self, model: Any) -> None:
        """Before the first optimizer step: the gradients training holds."""
        if "grads_mib" not in self.memory:
            self.memory["grads_mib"] = tensor_mib(p.grad for p in model.parameters()
                                                  if p.grad is not None)

    def optimizer(self, optimizer: Any) -> None:
        """After the first optimizer step: its state (AdamW: two moments per weight)."""
        if "optimizer_mib" not in self.memory and optimizer.state:
            self.memory["optimizer_mib"] = optimizer_mib(optimizer)

    def train_start(self) -> None:
        self.rss_start = rss_mib()
        self.t_train, self.peak_setup = time.perf_counter(), _peak_rss_mib()
        try:  # restart Linux's peak-RSS counter, so that the training peak is measured alone
            Path("/proc/self/clear_refs").write_text("5")
            self.peak_reset = True
        except OSError:
            pass

    def batch(self, steps_done: int, input_ids: Any, labels: Any, position_ids: Any,
              attention_mask: Any = None) -> None:
        """A micro-batch: packed rows (``position_ids``) or padded ones (``attention_mask``)."""
        if steps_done >= self.warmup:
            real = attention_mask.bool() if attention_mask is not None else input_ids != PAD_ID
            tokens = int(real.sum())
            supervised = int((labels[:, 1:] != -100).sum())
            self.tokens += tokens
            self.positions += input_ids.numel()
            self.supervised += supervised
            if self.shape is not None:
                # padding (at the end of tempering's rows) is not useful work
                if position_ids is None:  # a padded row is one conversation
                    documents = [int(n) for n in real.sum(dim=1)]
                else:
                    documents = []
                    for ids, pos in zip(input_ids, position_ids.reshape(input_ids.shape),
                                        strict=True):
                        row = pos[: int((ids != PAD_ID).sum())][None]
                        documents += [end - start for start, end in document_bounds(row)[0]]
                self.flops += self.shape.flops(tokens, documents, supervised)

    def step_end(self, step: int, loss: float) -> None:
        self.t_last, self.last_step = time.perf_counter(), step
        self.t_first = self.t_first or self.t_last  # the first optimizer step's end
        self.losses.append(loss)
        if step == self.warmup:
            self.t_warm = self.t_last

    def result(self) -> dict[str, Any]:
        steps, wall = self.last_step - self.warmup, self.t_last - self.t_warm
        train = _peak_rss_mib() if self.peak_reset else None
        gemm = gemm_flops_per_s()
        memory = dict(self.memory)
        if train is not None:
            held = memory.get("grads_mib", 0) + memory.get("optimizer_mib", 0)
            memory["rss_start_mib"] = self.rss_start
            memory["activations_mib"] = train - self.rss_start - held
        return {
            **memory, "useful_gflops_per_s": self.flops / wall / 1e9,
            "gemm_gflops_per_s": gemm / 1e9, "mfu": self.flops / wall / gemm,
            "measured_steps": steps, "wall_s": wall, "tokens": self.tokens,
            "supervised_tokens": self.supervised, "tokens_per_s": self.tokens / wall,
            "supervised_tokens_per_s": self.supervised / wall,
            "tokens_per_step": self.tokens / steps,
            "supervised_tokens_per_step": self.supervised / steps,
            "padding_fraction": 1 - self.tokens / max(1, self.positions),
            "final_loss_last10": sum(self.losses[-10:]) / len(self.losses[-10:]),
            "losses": [round(x, 4) for x in self.losses],
            "import_s": self.t_init - self.started, "setup_s": self.t_train - self.started,
            "first_step_s": self.t_first - self.started,
            "peak_rss_setup_mib": self.peak_setup, "peak_rss_train_mib": train,
            "peak_rss_mib": max(self.peak_setup, train or 0.0),
        }


def model_overrides(s: dict[str, Any]) -> dict[str, Any]:
    """The bundled tiny Llama's config, widened, deepened or given a larger vocabulary (token
    ids stay those of the tiny tokenizer; the embedding and head get the rows)."""
    out: dict[str, Any] = {}
    if s["hidden"]:
        heads = s["hidden"] // 32  # the bundled head width
        out.update(hidden_size=s["hidden"], num_attention_heads=heads,
                   num_key_value_heads=max(1, heads // 2),
                   intermediate_size=round(s["hidden"] * 2.75 / 64) * 64)
    if s["layers"]:
        out["num_hidden_layers"] = s["layers"]
    if s["vocab"]:
        out["vocab_size"] = s["vocab"]
    return out


# -- the data, converted as a TRL user would -------------------------------------------------------


def alpaca_messages(record: dict[str, str]) -> list[dict[str, str]]:
    # The same prompt as tempering's alpaca reader, so both frameworks train on the same text.
    extra = record.get("input") or ""
    prompt = f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def sharegpt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]


def load_messages(s: dict[str, Any]) -> list[list[dict[str, str]]]:
    alpaca = json.loads((DATA / "alpaca_5000.json").read_text())[: s["alpaca"]]
    chats = json.loads((DATA / "fastchat_dummy_conversation.json").read_text())[: s["chats"]]
    return [alpaca_messages(r) for r in alpaca] + [sharegpt_messages(r) for r in chats]


# -- the two runs ---------------------------------------------------------------------------------


def run_tempering(s: dict[str, Any], work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    # tempering imports datasets when it first tokenizes; TRL's run imports it up front. Here
    # too, so that data_prep_s times reading, tokenizing and packing, not an import.
    import datasets  # noqa: F401
    import lightning.pytorch as pl

    from tempering.recipe import load_recipe
    from tempering.train import driver as training

    meter, builds = Meter(s["warmup"], started), []

    class TimedDataModule(training.ConversationDataModule):  # times reading + tokenizing, nothing else
        def _build(self) -> None:
            t = time.perf_counter()
            super()._build()
            builds.append(time.perf_counter() - t)

    class Timing(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            meter.train_start()

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            meter.model_ready(module.model)
            meter.batch(trainer.global_step, batch["input_ids"], batch["labels"],
                        batch["position_ids"])

        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            meter.gradients(module.model)

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, *_: Any) -> None:
            meter.optimizer(trainer.optimizers[0])
            meter.step_end(trainer.global_step, float(out["loss"]))  # the step's token mean

    training.ConversationDataModule = TimedDataModule  # run_recipe looks the class up when called
    sources = [{"path": str(DATA / "alpaca_5000.json"), "format": "alpaca",
                "max_records": s["alpaca"]},
               {"path": str(DATA / "fastchat_dummy_conversation.json"), "format": "sharegpt",
                "max_records": s["chats"]}]
    recipe = load_recipe({
        "name": "bench", "chat_template": "chatml", "masking": "all_assistant",
        "model": {"name_or_path": "bundled:tiny-llama", "init": "random", "dtype": "float32",
                  "config_overrides": model_overrides(s)},
        "data": {"train": sources, "max_length": s["max_length"], "overflow": "drop",
                 "packing": True, "batch_size": s["rows"],  # packed rows of 512 per micro-batch
                 "cache_dir": str(work / "cache"),  # cold tokenization, like TRL's in-memory map
                 "on_bad_record": "skip"},  # the two empty alpaca answers; TRL drops them too
        "optim": {"lr": s["lr"], "weight_decay": 0.0, "warmup_steps": s["lr_warmup"],
                  "scheduler": "cosine"},
        "train": {"seed": 0, "output_dir": str(work / "run"), "save_final": False,
                  "compile": s.get("compile", False)},
        "eval": {"generate_samples": 0, "before_training": False},
        "wandb": {"mode": "disabled"},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": s["steps"],
                    "enable_progress_bar": False, "gradient_clip_val": 1.0},
    })
    summary = training.run_recipe(recipe, callbacks=[Timing()])
    return {**meter.result(), "data_prep_s": builds[0], "data_rebuilds_s": builds[1:],
            "conversations": summary["train_conversations"], "dropped": summary["skipped_records"],
            "dataset_tokens": summary["train_tokens"],
            "dataset_supervised_tokens": summary["train_supervised_tokens"]}


def run_trl(s: dict[str, Any], work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    import datasets
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    meter, loss = Meter(s["warmup"], started), [0.0]

    class CountingSFTTrainer(SFTTrainer):  # sees exactly the micro-batches the model gets
        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            meter.model_ready(model)
            meter.batch(self.state.global_step, inputs["input_ids"], inputs["labels"],
                        inputs.get("position_ids"), inputs.get("attention_mask"))
            out = super().compute_loss(model, inputs, *args, **kwargs)
            # divided by the whole step's supervised tokens: summed over the step's micro-batches
            # it is the step's token mean, as tempering's
            loss[0] += float(out.detach())
            return out

    class Timing(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.train_start()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.gradients(kw["model"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            meter.optimizer(kw["optimizer"])
            meter.step_end(state.global_step, loss[0])
            loss[0] = 0.0

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    tokenizer.chat_template = CHATML_TRAINING
    prep = time.perf_counter()
    # tempering skips conversations with an empty answer (TRL would train a bare <|im_end|>) and
    # drops those over max_length (TRL's bfd packing would truncate them): filter both out first.
    conversations = [m for m in load_messages(s)
                     if all(x["content"].strip() for x in m if x["role"] == "assistant")]
    ds = datasets.Dataset.from_list([{"messages": m} for m in conversations])
    ds = ds.filter(lambda ex: len(tokenizer.apply_chat_template(
        ex["messages"], tokenize=True, return_dict=True)["input_ids"]) <= s["max_length"])
    prep = time.perf_counter() - prep
    torch.manual_seed(0)
    model_config = AutoConfig.from_pretrained(MODEL_DIR)
    for key, value in model_overrides(s).items():
        setattr(model_config, key, value)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32,
                                             attn_implementation="sdpa")
    if s.get("trl_defaults"):
        # TRL as it comes: no packing (each micro-batch padded to its longest conversation),
        # bf16 autocast and gradient checkpointing; --rows conversations per step.
        layout: dict[str, Any] = {}
    else:
        # bfd packing implies padding-free: a micro-batch of packed rows is flattened into one
        # sequence. TRL defaults to bf16 autocast and gradient checkpointing; tempering's recipe
        # trains in float32 without checkpointing, so both are off for a like-for-like run.
        layout = {"packing": True, "packing_strategy": "bfd", "bf16": False,
                  "gradient_checkpointing": False}
    config = SFTConfig(
        output_dir=str(work / "run"), max_steps=s["steps"], seed=0,
        # --trl-split N feeds the step's rows in N micro-batches
        per_device_train_batch_size=s["rows"] // s["trl_split"],
        gradient_accumulation_steps=s["trl_split"],
        max_length=s["max_length"], assistant_only_loss=True,
        learning_rate=s["lr"], lr_scheduler_type="cosine", warmup_steps=s["lr_warmup"],
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, logging_steps=50, **layout)
    init = time.perf_counter()
    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=ds,
                                 processing_class=tokenizer, callbacks=[Timing()])
    prep += time.perf_counter() - init  # + tokenize, build labels, pack (inside SFTTrainer)
    packed = trainer.train_dataset
    trainer.train()
    return {**meter.result(), "data_prep_s": prep, "conversations": len(ds),
            "dropped": {"empty_assistant": s["alpaca"] + s["chats"] - len(conversations),
                        "too_long": len(conversations) - len(ds)},
            "dataset_tokens": sum(map(len, packed["input_ids"])),
            "dataset_supervised_tokens": sum(sum(t != -100 for t in x) for x in packed["labels"])}


def child(framework: str, settings: dict[str, Any], result_path: Path) -> None:
    import torch

    torch.set_num_threads(settings["threads"])
    with tempfile.TemporaryDirectory() as work:
        result = (run_tempering if framework == "tempering" else run_trl)(settings, Path(work))
    result_path.write_text(json.dumps({**result, "threads": torch.get_num_threads()}))


# -- the parent: run both, write JSON + markdown ---------------------------------------------------


def run_child(framework: str, settings: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        print(f"== {framework}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--child", framework, "--settings",
                        json.dumps(settings), "--result", out.name], env=env, check=True)
        return json.loads(Path(out.name).read_text())


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "trl", "accelerate", "lightning", "datasets", "tempering")
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            **{name: version(name) for name in packages}}


ROWS = [  # label, key, format; ratios (tempering / TRL) for the keys in RATIOS
    ("optimizer steps measured", "measured_steps", "{:d}"),
    ("wall time of the measured steps (s)", "wall_s", "{:.1f}"),
    ("**supervised tokens / s**", "supervised_tokens_per_s", "{:,.0f}"),
    ("tokens / s (non-padding)", "tokens_per_s", "{:,.0f}"),
    ("supervised tokens / step", "supervised_tokens_per_step", "{:,.0f}"),
    ("tokens / step", "tokens_per_step", "{:,.0f}"),
    ("padding fraction", "padding_fraction", "{:.3f}"),
    ("final train loss (mean of last 10 steps)", "final_loss_last10", "{:.3f}"),
    ("setup before the first step (s)", "setup_s", "{:.1f}"),
    ("- of which imports (s)", "import_s", "{:.1f}"),
    ("- of which read + tokenize + pack data (s)", "data_prep_s", "{:.1f}"),
    ("**time to the end of the first optimizer step (s)**", "first_step_s", "{:.1f}"),
    ("useful model GFLOP / s", "useful_gflops_per_s", "{:,.1f}"),
    ("fp32 GEMM rate of the same threads (GFLOP / s)", "gemm_gflops_per_s", "{:,.1f}"),
    ("**model FLOPs utilisation** (useful / GEMM rate)", "mfu", "{:.2f}"),
    ("peak RSS, whole run (MiB)", "peak_rss_mib", "{:,.0f}"),
    ("**peak RSS during training (MiB)**", "peak_rss_train_mib", "{:,.0f}"),
    ("- at the first step: libraries, data, weights (MiB)", "rss_start_mib", "{:,.0f}"),
    ("- of which weights (MiB)", "weights_mib", "{:,.0f}"),
    ("- gradients (MiB)", "grads_mib", "{:,.0f}"),
    ("- AdamW state (MiB)", "optimizer_mib", "{:,.0f}"),
    ("- the rest: activations, logits, temporaries (MiB)", "activations_mib", "{:,.0f}"),
    ("conversations kept (dropped: too long or empty answer)", "conversations", "{:,d}"),
    ("dataset tokens", "dataset_tokens", "{:,d}"),
    ("dataset supervised tokens", "dataset_supervised_tokens", "{:,d}"),
]
RATIOS = ("supervised_tokens_per_s", "tokens_per_s", "mfu", "peak_rss_mib", "peak_rss_train_mib")


def _shape(s: dict[str, Any]) -> str:
    parts = [f"{label} {s[key]:,}" for key, label in (("hidden", "width"), ("layers", "layers"),
                                                      ("vocab", "vocabulary")) if s.get(key)]
    return f" ({', '.join(parts)})" if parts else ""


def markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# SFT throughput: tempering vs TRL SFTTrainer", "",
        f"{m['cpu_count']} CPUs ({m['platform']}), {s['threads']} torch threads per framework; "
        f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, lightning "
        f"{m['lightning']}. Bundled tiny Llama{_shape(s)} (random init, float32, SDPA); the first "
        f"{s['alpaca']} alpaca records + {s['chats']} ShareGPT conversations, ChatML, loss on "
        f"assistant tokens, packed into rows of {s['max_length']} tokens, {s['rows']} rows per "
        + (f"optimizer step; TRL with its defaults: no packing ({s['rows']} conversations "
           "a step, each micro-batch padded to its longest), bf16 autocast, gradient "
           "checkpointing; " if s.get("trl_defaults") else
           f"optimizer step (TRL: {s['trl_split']} micro-batch(es), each flattened "
           "padding-free); ")
        + f"{s['steps']} steps, the first {s['warmup']} not timed; best of {s['repeats']} run(s)."
        + (" tempering with `train.compile: true` (its decoder layers compiled; the compile "
           "time falls in the untimed first steps)." if s.get("compile") else ""),
        "", "| metric | tempering | TRL | tempering / TRL |", "| --- | ---: | ---: | ---: |"]
    for label, key, fmt in ROWS:
        cells = []
        for x in (report["tempering"], report["trl"]):
            cell = "n/a" if x.get(key) is None else fmt.format(x[key])
            cells.append(f"{cell} ({sum(x['dropped'].values())})" if key == "conversations"
                         else cell)
        ratio = f"{report['ratios'][key]:.2f}x" if key in report["ratios"] else ""
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per framework")
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing")
    p.add_argument("--rows", type=int, default=4, help="packed rows of 512 tokens per step")
    p.add_argument("--trl-split", type=int, default=1, help="TRL: N micro-batches per step")
    p.add_argument("--alpaca", type=int, default=5000, help="first N alpaca records")
    p.add_argument("--chats", type=int, default=500, help="first N ShareGPT conversations")
    p.add_argument("--threads", type=int, default=2, help="torch threads per framework")
    p.add_argument("--hidden", type=int, default=0, help="model width (0: the bundled 128)")
    p.add_argument("--layers", type=int, default=0, help="decoder layers (0: the bundled 4)")
    p.add_argument("--vocab", type=int, default=0, help="vocabulary rows (0: the bundled 640)")
    p.add_argument("--name", default="sft_throughput", help="file name of the results")
    p.add_argument("--compile", action="store_true",
                   help="tempering with train.compile (its compile time is in setup + warmup)")
    p.add_argument("--trl-defaults", action="store_true",
                   help="TRL with its own defaults (no packing, bf16 autocast, checkpointing)")
    p.add_argument("--repeats", type=int, default=2, help="runs per framework, alternating")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, json.loads(a.settings), a.result)
    if a.rows % a.trl_split:
        p.error("--rows must be a multiple of --trl-split")
    settings = {"steps": a.steps, "warmup": a.warmup, "rows": a.rows, "trl_split": a.trl_split,
                "alpaca": a.alpaca, "chats": a.chats, "threads": a.threads, "repeats": a.repeats,
                "max_length": 512, "lr": 1e-3, "lr_warmup": 10, "hidden": a.hidden,
                "layers": a.layers, "vocab": a.vocab, "compile": a.compile,
                "trl_defaults": a.trl_defaults}
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in FRAMEWORKS}
    for _ in range(a.repeats):  # alternate, so that a slow spell of the machine hits both
        for framework in FRAMEWORKS:
            runs[framework].append(run_child(framework, settings))
    report: dict[str, Any] = {"machine": machine(), "settings": settings}
    for framework, results in runs.items():  # noise only slows a run down: keep the fastest
        best = max(results, key=lambda r: r["supervised_tokens_per_s"])
        report[framework] = {**best, "runs": [r["supervised_tokens_per_s"] for r in results]}
    t, r = report["tempering"], report["trl"]
    report["ratios"] = {k: t[k] / r[k] for k in RATIOS if t.get(k) and r.get(k)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / f"{a.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
