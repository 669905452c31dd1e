"""tempering: post-training for language models on PyTorch Lightning.

Third-party plugins import only from here::

    from tempering import ChatTemplate, hookimpl

    @hookimpl
    def register_chat_templates():
        return [ChatTemplate("mytemplate", "{% for m in messages %}...{% endfor %}")]
"""

from __future__ import annotations

import importlib
from typing import Any

from tempering.components import (
    ChatTemplate,
    EvolutionOperator,
    FilterContext,
    GeneratorBackend,
    MaskingStrategy,
    Metric,
    Objective,
    OverflowPolicy,
    RecordFormat,
    SampleFilter,
    Scorer,
    Task,
    TaskFormatter,
)
from tempering.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

# Heavy parts (torch, Lightning) load on first use so that plugins and the CLI start fast.
_LAZY = {
    "IGNORE_INDEX": "tempering.chat.encoding",
    "Encoded": "tempering.chat.encoding",
    "ConversationEncoder": "tempering.chat.encoding",
    "encode_conversation": "tempering.chat.encoding",
    "TemplateError": "tempering.chat.templates",
    "resolve_chat_template": "tempering.chat.templates",
    "BadRecordError": "tempering.data.records",
    "to_messages": "tempering.data.records",
    "build_plugin_manager": "tempering.plugin_manager",
    "build_registry": "tempering.plugin_manager",
    "load_recipe": "tempering.recipe",
    "Recipe": "tempering.recipe",
    "RecipeError": "tempering.recipe",
    "Batch": "tempering.data.batch",
    "LossContext": "tempering.train.losses",
    "LossOutput": "tempering.train.losses",
    "forward_hidden": "tempering.train.losses",
    "project_logits": "tempering.train.losses",
    "chunked_per_token": "tempering.train.losses",
    "supervised_positions": "tempering.train.losses",
    "supervised_hidden": "tempering.train.losses",
    "token_nll": "tempering.train.losses",
    "common_vocab": "tempering.train.losses",
    "chunk_rows": "tempering.train.losses",
    "teacher_logits_for": "tempering.train.losses",
    "PerfLogger": "tempering.train.callbacks",
    "load_causal_lm": "tempering.models",
    "load_fast_tokenizer": "tempering.models",
    "CausalLMModule": "tempering.train.module",
    "ConversationDataModule": "tempering.data.datamodule",
    "run_recipe": "tempering.train.driver",
    "run_pipeline": "tempering.pipeline",
    "Generator": "tempering.generate",
    "GenerationParams": "tempering.generate",
    "GenerationContext": "tempering.generate",
    "Completion": "tempering.generate",
    "HFGenerator": "tempering.generate",
    "OpenAIGenerator": "tempering.generate.openai_backend",
    "VLLMGenerator": "tempering.generate.vllm_backend",
    "RewardModel": "tempering.generate.reward",
    "SandboxError": "tempering.generate.sandbox",
    "SandboxLimits": "tempering.generate.sandbox",
    "SandboxResult": "tempering.generate.sandbox",
    "run_python_tests": "tempering.generate.sandbox",
    "rouge_l": "tempering.rouge",
    "rouge_tokens": "tempering.rouge",
    "NoveltyIndex": "tempering.rouge",
    "sandbox_layers": "tempering.generate.sandbox",
}

__all__ = [
    "__version__",
    "ChatTemplate",
    "EvolutionOperator",
    "FilterContext",
    "GeneratorBackend",
    "MaskingStrategy",
    "Metric",
    "Objective",
    "OverflowPolicy",
    "RecordFormat",
    "SampleFilter",
    "Scorer",
    "Task",
    "TaskFormatter",
    "hookimpl",
    "hookspec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tempering' has no attribute {name!r}")
