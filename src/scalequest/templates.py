"""Chat-template text for question synthesis: the pre-query prefix, the end-of-turn marker, stop strings.

ScaleQuest samples a chat model from nothing but the opening of a user turn (the "pre-query prefix"),
so the model writes a user's question. Everything here is derived by rendering the tokenizer's own
chat template around a sentinel message and cutting at the sentinel, so it works for any chat model
without a per-family table:

    ChatML (Qwen2)  '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n'
    Llama-3         '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n'
    Gemma           '<bos><start_of_turn>user\\n'
    Mistral         '<s>[INST] '
    DeepSeek        '<｜begin▁of▁sentence｜>User: '

BOS. Some templates write the BOS token into the text (Llama-3, Gemma, Mistral, DeepSeek). That is
the text the model sees in chat use, so it stays in the prefix; but an engine must then NOT add BOS a
second time. Encode prompt text with `encode_prompt_text` (add_special_tokens=False), exactly as
transformers' own `apply_chat_template(tokenize=True)` does. In vLLM pass those token ids
(TokensPrompt) rather than the raw text, because vLLM adds special tokens to raw text prompts.

The tokenizer is passed in; this module imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

# Stand-in for the user message's content. No whitespace at either end, so templates that apply `| trim`
# keep it whole; plain ASCII letters and digits, so no template escaping or tokenizer quirk
# changes it, and unlikely to occur in any template's own text.
USER_SENTINEL = "SQ7xUSERxSENTINEL"


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {_name(tokenizer)!r} has no chat template, so there is no pre-query prefix to "
            "sample from; use a chat (instruct) model's tokenizer or set tokenizer.chat_template"
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render `messages` with the tokenizer's chat template; template errors become ValueError."""
    _require_chat_template(tokenizer)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja2 TemplateError from raise_exception(), or any bug in the template
        roles = "/".join(m["role"] for m in messages)
        raise ValueError(
            f"the chat template of {_name(tokenizer)!r} rejected a conversation with roles {roles}: {err}"
        ) from err
    if not isinstance(text, str):  # e.g. a list when a template somehow renders a batch
        raise ValueError(f"the chat template of {_name(tokenizer)!r} did not render to a single string")
    return text


def _split_at(text: str, sentinel: str, tokenizer: Any) -> tuple[str, str]:
    """Split rendered text around the first occurrence of `sentinel` (the text before, the text after)."""
    at = text.find(sentinel)
    if at < 0:
        raise ValueError(
            f"the chat template of {_name(tokenizer)!r} does not write the message content verbatim "
            f"(the sentinel {sentinel!r} is missing from {text!r}); cannot find the pre-query prefix"
        )
    return text[:at], text[at + len(sentinel) :]


def pre_query_prefix(tokenizer: Any, system_prompt: str | None = None) -> str:
    """The exact text the chat template writes before the content of the (first) user message.

    Sampling the model from this text makes it write a user's question. What the template adds is
    kept, because that is what the model sees in chat use:
      - a default system turn the template inserts when none is given (Qwen2, SmolLM2);
      - the BOS token written as text (Llama-3, Gemma, Mistral, DeepSeek) -- encode with
        `encode_prompt_text`, i.e. add_special_tokens=False, so BOS is not doubled;
      - with `system_prompt`, a {"role": "system"} message goes before the user message. Templates that
        merge the system prompt into the first user turn (Mistral: "[INST] {system}\\n\\n{user} [/INST]")
        give a prefix that ends with the system text and the blank line, which is correct.

    Raises ValueError when the tokenizer has no chat template, when the template rejects the
    conversation (Gemma raises "System role not supported" for a system message), or when it silently
    drops the system prompt.
    """
    _require_chat_template(tokenizer)  # before the try below, so this error is not blamed on the system prompt
    messages = [{"role": "user", "content": USER_SENTINEL}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    try:
        rendered = _render(tokenizer, messages, add_generation_prompt=False)
    except ValueError as err:
        if system_prompt is None:
            raise
        raise ValueError(
            f"the chat template of {_name(tokenizer)!r} does not support a system prompt ({err.__cause__ or err}); "
            "leave system_prompt unset for this model"
        ) from err
    prefix, _ = _split_at(rendered, USER_SENTINEL, tokenizer)
    # A template that ignores system messages would make the caller believe the model saw the prompt.
    if system_prompt is not None and system_prompt.strip() not in prefix:
        raise ValueError(
            f"the chat template of {_name(tokenizer)!r} drops the system prompt (it is not in {prefix!r}); "
            "leave system_prompt unset for this model"
        )
    return prefix


def _special_texts(tokenizer: Any) -> list[str]:
    """Special and added tokens as text, longest first (so '<|im_end|>' wins over a shorter '<|im')."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    get_added_vocab = getattr(tokenizer, "get_added_vocab", None)
    if get_added_vocab is not None:
        texts.update(get_added_vocab())
    return sorted((t for t in texts if t and t.strip()), key=len, reverse=True)


def _marker(tail: str, specials: list[str]) -> str | None:
    """The end-of-turn marker at the start of `tail`, with the whitespace before it; None if none.

    A special/added token right after the whitespace is the marker ('<|im_end|>', '<|eot_id|>');
    otherwise the marker is the rest of the first non-blank line ('[/INST]', 'Assistant:').
    """
    body = tail.lstrip()
    if not body:
        return None
    lead = tail[: len(tail) - len(body)]
    for token in specials:
        if body.startswith(token):
            return lead + token
    return lead + body.split("\n", 1)[0].rstrip()


def end_of_turn(tokenizer: Any) -> str:
    """The text with which the template closes a user turn: what QFT training text ends with.

    Training text = pre_query_prefix(tok) + question + end_of_turn(tok) is exactly the template's own
    rendering of that one-message conversation (up to where the assistant's reply would start). So the
    leading whitespace the template puts before a plain-text marker is kept:

        ChatML '<|im_end|>'   Llama-3 '<|eot_id|>'   Gemma '<end_of_turn>'   Phi-3 '<|end|>'
        Mistral ' [/INST]'    DeepSeek '\\n\\nAssistant:'

    DeepSeek closes a user turn with a bare blank line, which cannot mark the end of a question
    (questions have paragraphs); the next visible text, the generation prompt 'Assistant:', is what a
    model writes when it finishes a question, so the marker is taken from the add_generation_prompt
    rendering when the plain one has only whitespace after the user message. Falls back to the EOS
    token when neither rendering shows anything after the user message.

    To stop generation, use `stop_strings` (whitespace-stripped markers plus EOS), not this value.
    """
    specials = _special_texts(tokenizer)
    for add_generation_prompt in (False, True):
        rendered = _render(tokenizer, [{"role": "user", "content": USER_SENTINEL}], add_generation_prompt)
        _, tail = _split_at(rendered, USER_SENTINEL, tokenizer)
        marker = _marker(tail, specials)
        if marker is not None:
            return marker
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        return eos
    raise ValueError(
        f"cannot tell where a user turn ends in the chat template of {_name(tokenizer)!r}: nothing follows "
        "the user message and the tokenizer has no EOS token"
    )


def stop_strings(tokenizer: Any) -> list[str]:
    """What generation of a question stops at: the end-of-turn marker (stripped) and the EOS token.

    The marker is stripped of whitespace so a model that writes 'question[/INST]' without the
    template's space still stops; the caller strips the question. Markers that are special tokens
    only show up in decoded text when it is decoded with skip_special_tokens=False; engines that
    decode otherwise should stop on `stop_token_ids` instead.
    """
    candidates = [end_of_turn(tokenizer).strip(), (getattr(tokenizer, "eos_token", None) or "").strip()]
    stops: list[str] = []
    for text in candidates:
        if text and text not in stops:
            stops.append(text)
    return stops


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of the stop strings that are special/added tokens ('<|im_end|>', '<|eot_id|>', EOS).

    Useful as extra `eos_token_id`s for transformers' generate() or `stop_token_ids` in vLLM. Stop
    strings that are plain text ('[/INST]' in Mistral v0.1, 'Assistant:') span several tokens and
    must be matched as text.
    """
    specials = set(_special_texts(tokenizer))
    ids: list[int] = []
    for text in stop_strings(tokenizer):
        if text in specials:
            token_id = tokenizer.convert_tokens_to_ids(text)
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return ids


def encode_prompt_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of prompt text built from the chat template (e.g. a pre-query prefix).

    add_special_tokens=False: the template already wrote every special token the model expects (BOS
    included, where the template has one); letting the tokenizer add BOS again would give the model
    '<bos><bos>...', which it never saw in training. This is what apply_chat_template(tokenize=True) does.
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# Our prompt texts. Chain of thought for solving (responses, evaluation): the question, then a request to
# reason step by step and put the final answer in \boxed{} (the checker's first choice). For code: reason, then
# one Python function in a fenced block (what scalequest.code.programs.extract_program reads).
SOLVE_INSTRUCTION = "Work through this step by step, then write the final answer inside \\boxed{}."
CODE_SOLVE_INSTRUCTION = (
    "Think through the task step by step, then write the complete solution as one Python function, with the imports "
    "it needs, in a single ```python code block."
)
INSTRUCTIONS = {"math": SOLVE_INSTRUCTION, "code": CODE_SOLVE_INSTRUCTION}


def solve_message(question: str, domain: str = "math") -> str:
    """The user message that asks a chat model to solve a question with chain of thought."""
    return f"{question.strip()}\n\n{INSTRUCTIONS[domain]}"


# A base model given the plain prompt tends to go on with a new "Question:" of its own.
PLAIN_SOLVE_STOP = "\nQuestion:"


def solve_stops(chat: bool) -> tuple[str, ...]:
    """Stop strings the solve prompt needs beyond the configured ones."""
    return () if chat else (PLAIN_SOLVE_STOP,)


def plain_solve_prompt(question: str, domain: str = "math") -> str:
    """The same request as plain text, for base models without a chat template."""
    return f"Question: {question.strip()}\n{INSTRUCTIONS[domain]}\nAnswer:"


def solve_prompt(question: str, chat: bool, domain: str = "math") -> str | list[dict[str, str]]:
    """The chain-of-thought request for one question: a chat turn, or plain text for base models."""
    if chat:
        return [{"role": "user", "content": solve_message(question, domain)}]
    return plain_solve_prompt(question, domain)


def uses_chat_template(engine: Any, engine_config: Any, prompt_format: str) -> bool:
    """Whether prompts go in as chat messages: forced by prompt_format ("chat"/"plain"), else ("auto") when
    the model's tokenizer has a chat template; an API model without a local tokenizer counts as chat."""
    if prompt_format != "auto":
        return prompt_format == "chat"
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None and engine_config.engine == "openai":
        return True
    if tokenizer is None:
        from scalequest.models import load_tokenizer

        tokenizer = load_tokenizer(engine_config.tokenizer_path(), engine_config.trust_remote_code)
    return bool(getattr(tokenizer, "chat_template", None))
