"""Built-in chat templates, written by us in the Hugging Face Jinja convention.

Each is parity-tested token for token against the vendor's template (where
``shared/data/chat_templates`` has one) or its documented format.
"""

from __future__ import annotations

from tempering import ChatTemplate, hookimpl

__all__ = ["LLAMA3", "CHATML", "QWEN2_5", "MISTRAL", "GEMMA", "PHI3", "ALPACA"]

# Llama 3 / 3.1 / 3.2 instruct turn format (no date header): content is trimmed.
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Plain ChatML; no default system message.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML as Qwen 2.5 renders it: a default system message when the conversation has none.
QWEN2_5 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + _QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}" + CHATML
)

# Mistral instruct ([INST] format): the system message is prepended to the first user turn.
MISTRAL = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% set loop_messages = messages[1:] if messages[0]['role'] == 'system' else messages %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system + '\\n\\n' if system and loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('mistral: roles must be system (first), user or assistant') }}"
    "{% endif %}{% endfor %}"
)

# Gemma / Gemma 3 text format: assistant is "model"; a system message joins the first user turn.
GEMMA = (
    "{{ bos_token }}"
    "{% set prefix = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% set loop_messages = messages[1:] if messages[0]['role'] == 'system' else messages %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Phi-3 / Phi-3.5 mini instruct.
PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

# Stanford Alpaca prompt for base models, joined to the output exactly as Alpaca's train.py does
# (no newline after "### Response:"); a system message replaces the preamble.
ALPACA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ '" + _ALPACA_PREAMBLE + "' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\\n\\n### Response:' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n### Response:' }}{% endif %}"
)


@hookimpl
def register_chat_templates() -> list[ChatTemplate]:
    return [
        ChatTemplate("llama3", LLAMA3, "Llama 3 instruct headers, <|eot_id|> ends a turn",
                     ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
        ChatTemplate("chatml", CHATML, "ChatML (<|im_start|>role ... <|im_end|>)",
                     ("<|im_start|>", "<|im_end|>")),
        ChatTemplate("qwen2.5", QWEN2_5, "ChatML with Qwen 2.5's default system message",
                     ("<|im_start|>", "<|im_end|>")),
        ChatTemplate("mistral", MISTRAL, "Mistral [INST] ... [/INST] answer</s>",
                     ("[INST]", "[/INST]")),
        ChatTemplate("gemma", GEMMA, "Gemma <start_of_turn>user|model ... <end_of_turn>",
                     ("<start_of_turn>", "<end_of_turn>")),
        ChatTemplate("phi3", PHI3, "Phi-3 <|user|> ... <|end|>",
                     ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
        ChatTemplate("alpaca", ALPACA, "Stanford Alpaca prompt for base models (no special markers)"),
    ]
