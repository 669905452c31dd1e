"""Built-in generation backends: ``transformers`` (the run's model, in process), ``vllm`` (the
run's model loaded by vLLM on GPUs) and ``openai`` (any OpenAI-compatible endpoint: a vLLM
server, ``tempering serve``, a hosted API)."""

from __future__ import annotations

from typing import Any

from tempering import GeneratorBackend, hookimpl

__all__ = ["register_generators"]


def transformers(context: Any, batch_size: int = 8) -> Any:
    """Batched ``model.generate`` with a shared prompt prefill for N samples."""
    from tempering import HFGenerator

    if context.model is None:
        raise ValueError("the transformers backend generates with the run's model; none is "
                         "loaded here")
    return HFGenerator(context.model, context.tokenizer, context.encoder,
                       list(context.stop_ids), batch_size=batch_size)


def openai(context: Any, model: str, base_url: str | list[str] | None = None,
           api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
           max_retries: int = 5, timeout: float = 120.0) -> Any:
    """Chat completions from ``model`` at ``base_url`` (the endpoint applies its own template);
    a list of endpoints serving the same model spreads the prompts over them (a fleet)."""
    from tempering import OpenAIGenerator

    tok = context.tokenizer
    count = (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])) if tok else None
    return OpenAIGenerator(model, base_url, api_key_env, concurrency=concurrency,
                           max_retries=max_retries, timeout=timeout, count_tokens=count)


def vllm(context: Any, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
         max_model_len: int | None = None, dtype: str = "auto", seed: int = 0) -> Any:
    """vLLM's engine over the run's model (extra `vllm`, a CUDA GPU)."""
    from tempering import VLLMGenerator

    if not context.model_path:
        raise ValueError("the vllm backend loads the run's model from its folder; none is given")
    return VLLMGenerator(context.model_path, context.tokenizer, context.encoder,
                         list(context.stop_ids), tensor_parallel_size=tensor_parallel_size,
                         gpu_memory_utilization=gpu_memory_utilization,
                         max_model_len=max_model_len, dtype=dtype, seed=seed)


@hookimpl
def register_generators() -> list[GeneratorBackend]:
    return [
        GeneratorBackend("transformers", transformers, description="the run's model in this "
                         "process, batched, prompt prefilled once for N samples"),
        GeneratorBackend("vllm", vllm, in_process=False, own_process=True,
                         description="vLLM on GPUs, the run's model and template (extra `vllm`)"),
        GeneratorBackend("openai", openai, in_process=False,
                         description="an OpenAI-compatible endpoint through the official client "
                         "(extra `openai`)"),
    ]
