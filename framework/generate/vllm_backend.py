"""A :class:`~tempering.generate.Generator` over vLLM's offline engine (``vllm.LLM``), for fast
sampling on CUDA GPUs (the optional extra ``pip install 'tempering[vllm]'``).

Prompts are rendered with the run's template exactly as the transformers backend renders them
and handed to vLLM as token ids (``{"prompt_token_ids": [...]}``, vLLM's ``TokensPrompt``), so
vLLM neither re-renders nor re-tokenizes them and no second BOS is added. All prompts go to one
``LLM.generate`` call with one ``SamplingParams``; vLLM schedules them itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tempering.generate.base import Completion, GenerationParams, prompt_token_ids

__all__ = ["VLLMGenerator"]

_MISSING = ("vLLM is not installed: pip install 'tempering[vllm]' (vLLM needs a CUDA GPU; "
            "elsewhere use the transformers backend)")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return vllm


class VLLMGenerator:
    """Completions from a vLLM engine over ``model``.

    Args:
        model: the model folder or hub id vLLM loads (its own copy of the weights).
        tokenizer: the run's tokenizer (prompts are encoded with it; vLLM is given its
            ``name_or_path`` to decode with).
        encoder: the run's :class:`tempering.ConversationEncoder` (template and its variables).
        stop_ids: token ids that end a completion (the trained end-of-turn and EOS; vLLM also
            stops at the model's EOS on its own).
        tensor_parallel_size: GPUs the model is split over.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights and KV cache).
        max_model_len: the longest prompt + completion (None: the model's own).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        seed: the engine's seed (a call's ``params.seed`` seeds its requests).
        llm: an engine already built (tests pass a fake; nothing is imported then).
        sampling_params_cls: the class that builds sampling parameters (None:
            ``vllm.SamplingParams``); tests pass a fake.
        engine_kwargs: further ``vllm.LLM`` arguments (``enforce_eager``, ...).
        progress: show vLLM's progress bar.

    Raises:
        ImportError: one line with the install command when vLLM is needed and missing.
    """

    def __init__(self, model: str, tokenizer: Any, encoder: Any, stop_ids: list[int], *,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", seed: int = 0,
                 llm: Any = None, sampling_params_cls: Any = None,
                 engine_kwargs: dict[str, Any] | None = None, progress: bool = True) -> None:
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.stop_ids, self.progress = list(stop_ids), progress
        self._sampling_params_cls = sampling_params_cls
        if llm is None:
            vllm = _import_vllm()
            extra: dict[str, Any] = dict(engine_kwargs or {})
            if max_model_len is not None:
                extra["max_model_len"] = max_model_len
            llm = vllm.LLM(model=model, tokenizer=getattr(tokenizer, "name_or_path", None) or model,
                           tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed,
                           **extra)
        self.llm = llm

    def __repr__(self) -> str:
        return f"VLLMGenerator(model={self.model!r})"

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids of a prompt: the run's template with the generation prompt, encoded
        without special tokens (the template writes its own BOS), as the transformers backend
        encodes it."""
        return prompt_token_ids(self.tokenizer, self.encoder, messages)

    def sampling_params(self, params: GenerationParams) -> Any:
        """vLLM's sampling parameters for ``params``.

        Greedy decoding (``temperature == 0``) asks for one completion (vLLM refuses ``n > 1``
        when greedy); :meth:`generate` repeats it. ``top_k == 0`` (all tokens) is sent as -1,
        which every vLLM version reads as "all" (newer ones also take 0, older ones only -1).
        """
        cls = self._sampling_params_cls or _import_vllm().SamplingParams
        greedy = params.temperature == 0
        return cls(n=1 if greedy else params.n, temperature=params.temperature,
                   top_p=1.0 if greedy else params.top_p,
                   top_k=-1 if greedy or params.top_k == 0 else params.top_k,
                   max_tokens=params.max_new_tokens, seed=params.seed, stop=list(params.stop),
                   stop_token_ids=list(self.stop_ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[list[Completion]]:
        if not prompts:
            return []
        token_prompts = [{"prompt_token_ids": self.prompt_ids(m)} for m in prompts]
        outputs = self.llm.generate(token_prompts, self.sampling_params(params),
                                    use_tqdm=self.progress)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        result = []
        for output in outputs:  # vLLM returns them in the order of the prompts
            done = [self._completion(c) for c in sorted(output.outputs, key=lambda c: c.index)]
            result.append(done * params.n if len(done) == 1 else done)
        return result

    def _completion(self, output: Any) -> Completion:
        """One vLLM ``CompletionOutput`` as a :class:`Completion`."""
        tokens = list(output.token_ids)
        if output.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason "
                               f"{output.finish_reason!r}; expected 'stop' or 'length'")
        text = output.text
        if output.finish_reason == "stop" and tokens and tokens[-1] in self.stop_ids:
            # vLLM keeps a stop token's text when it is not a special token; decoding the
            # tokens before it gives the answer alone, as the transformers backend does.
            text = self.tokenizer.decode(tokens[:-1], skip_special_tokens=True)
        return Completion(text, len(tokens), output.finish_reason)
