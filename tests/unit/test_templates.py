"""Pre-query prefix, end-of-turn and stop strings against faithful copies of real chat templates.

Tokenizers are built in code (a one-word WordLevel model plus the family's special tokens), so no
download is needed; only the chat template and the special tokens matter to the functions under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from scalequest.templates import (  # noqa: E402
    encode_prompt_text,
    end_of_turn,
    pre_query_prefix,
    stop_strings,
    stop_token_ids,
)

QUESTION = "What is 2+2?"
SYSTEM = "Be brief."

# --- Chat templates, copied from the models' tokenizer_config.json -------------------------------

# Qwen2-Instruct / Qwen2-Math-Instruct: ChatML with a default system turn.
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SmolLM2-Instruct: ChatML with its own default system turn. Byte-identical to the template in the
# embedded GGUF, which has raw newlines inside the Jinja string literals (they render the same as the '\n' escapes
# used below).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain ChatML (OpenHermes style): no default system turn.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct: BOS written by the template, content trimmed.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# deepseek-llm-chat / DeepSeekMath-Instruct/RL: the user turn ends with a bare blank line.
DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + "
    "'\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Gemma-it: no system role, strict alternation, content trimmed.
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% "
    "endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% "
    "endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# Mistral/Mixtral-Instruct [INST]: strict alternation, the optional system prompt merged into the
# first user message, no generation prompt (the assistant's reply follows '[/INST]' directly).
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}"
    "{%- endif %}{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + message['content'] "
    "+ ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') }}"
    "{%- endif %}{%- endfor %}"
)

# Phi-3-mini-instruct (mid-2024 revision): no BOS in the template, EOS after a turn without a generation prompt.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% "
    "endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def make_tokenizer(
    template: str | None,
    *,
    bos: str | None = None,
    eos: str | None = None,
    specials: tuple[str, ...] = (),
    name: str = "test/tokenizer",
    add_bos: bool = False,
):
    """A tiny fast tokenizer: every unknown word is [UNK]; the special tokens are real added tokens."""
    model = tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    kwargs: dict = {"unk_token": "[UNK]", "name_or_path": name}
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if add_bos:
        # Like Llama/Mistral tokenizers: a post-processor that prepends BOS when add_special_tokens=True.
        tok.backend_tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
        )
    tok.chat_template = template
    return tok


@dataclass
class Family:
    name: str
    template: str
    eos: str
    prefix: str  # expected pre_query_prefix without a system prompt
    system_prefix: str | None  # expected with SYSTEM; None: the template rejects system turns
    end_of_turn: str
    stops: list[str]
    bos: str | None = None
    specials: tuple[str, ...] = ()
    # The one-user-message render without a generation prompt also starts with prefix+question+eot
    # (False for DeepSeek, whose end-of-turn marker only appears with the generation prompt).
    eot_in_plain_render: bool = True
    stop_ids_count: int | None = None  # how many of the stops are single special tokens; None: all of them


def chatml_family(name: str, template: str, **fields) -> Family:
    """A ChatML family: a turn ends with <|im_end|>, and SYSTEM stands in a system turn of its own."""
    system_prefix = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    return Family(name=name, template=template, system_prefix=system_prefix, end_of_turn="<|im_end|>", **fields)


FAMILIES = [
    chatml_family(
        "qwen2",
        QWEN2,
        eos="<|im_end|>",
        specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        prefix="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        stops=["<|im_end|>"],
    ),
    chatml_family(
        "smollm2",
        SMOLLM2,
        bos="<|im_start|>",  # SmolLM2's BOS really is <|im_start|>: adding it again would corrupt the prompt
        eos="<|im_end|>",
        specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        prefix="<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n",
        stops=["<|im_end|>"],
    ),
    chatml_family(
        "chatml",
        CHATML,
        eos="<|endoftext|>",
        specials=("<|im_start|>", "<|im_end|>"),
        prefix="<|im_start|>user\n",
        stops=["<|im_end|>", "<|endoftext|>"],
    ),
    Family(
        name="llama3",
        template=LLAMA3,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        specials=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        prefix="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        system_prefix="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        stops=["<|eot_id|>"],
    ),
    Family(
        name="deepseek",
        template=DEEPSEEK,
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        prefix="<｜begin▁of▁sentence｜>User: ",
        system_prefix="<｜begin▁of▁sentence｜>Be brief.\n\nUser: ",
        end_of_turn="\n\nAssistant:",
        stops=["Assistant:", "<｜end▁of▁sentence｜>"],
        eot_in_plain_render=False,
        stop_ids_count=1,
    ),
    Family(
        name="gemma",
        template=GEMMA,
        bos="<bos>",
        eos="<eos>",
        specials=("<start_of_turn>", "<end_of_turn>"),
        prefix="<bos><start_of_turn>user\n",
        system_prefix=None,
        end_of_turn="<end_of_turn>",
        stops=["<end_of_turn>", "<eos>"],
    ),
    Family(
        name="mistral",
        template=MISTRAL,
        bos="<s>",
        eos="</s>",
        specials=(),  # Mistral-7B-Instruct-v0.1/v0.2: [INST] and [/INST] are plain text
        prefix="<s>[INST] ",
        system_prefix="<s>[INST] Be brief.\n\n",
        end_of_turn=" [/INST]",
        stops=["[/INST]", "</s>"],
        stop_ids_count=1,
    ),
    Family(
        name="phi3",
        template=PHI3,
        bos="<s>",
        eos="<|endoftext|>",
        specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        prefix="<|user|>\n",
        system_prefix="<|system|>\nBe brief.<|end|>\n<|user|>\n",
        end_of_turn="<|end|>",
        stops=["<|end|>", "<|endoftext|>"],
    ),
]


def family_tokenizer(family: Family):
    return make_tokenizer(
        family.template, bos=family.bos, eos=family.eos, specials=family.specials, name=f"test/{family.name}"
    )


def render(tok, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_prefix_and_end_of_turn(family: Family) -> None:
    tok = family_tokenizer(family)
    assert pre_query_prefix(tok) == family.prefix
    assert end_of_turn(tok) == family.end_of_turn
    assert stop_strings(tok) == family.stops


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
def test_training_text_matches_template_render(family: Family, system: str | None) -> None:
    """prefix + question + end_of_turn is the template's own text for that conversation."""
    if system is not None and family.system_prefix is None:
        pytest.skip("template has no system role")
    tok = family_tokenizer(family)
    messages = [{"role": "user", "content": QUESTION}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
        assert pre_query_prefix(tok, system) == family.system_prefix

    text = pre_query_prefix(tok, system) + QUESTION + end_of_turn(tok)
    assert render(tok, messages, add_generation_prompt=True).startswith(text)
    if family.eot_in_plain_render:
        assert render(tok, messages, add_generation_prompt=False).startswith(text)
    else:
        assert render(tok, messages, add_generation_prompt=False).rstrip() == text.removesuffix("Assistant:").rstrip()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_stop_token_ids_are_the_single_token_stops(family: Family) -> None:
    tok = family_tokenizer(family)
    ids = stop_token_ids(tok)
    assert len(ids) == (len(family.stops) if family.stop_ids_count is None else family.stop_ids_count)
    assert all(tok.convert_ids_to_tokens(i) in family.stops for i in ids)


def test_gemma_system_prompt_raises_clear_error() -> None:
    tok = family_tokenizer(next(f for f in FAMILIES if f.name == "gemma"))
    with pytest.raises(ValueError, match="does not support a system prompt.*System role not supported"):
        pre_query_prefix(tok, SYSTEM)


def test_no_chat_template_raises_with_tokenizer_name() -> None:
    tok = make_tokenizer(None, eos="</s>", name="acme/base-model")
    with pytest.raises(ValueError, match="acme/base-model.*no chat template"):
        pre_query_prefix(tok)
    with pytest.raises(ValueError, match="no chat template"):
        pre_query_prefix(tok, SYSTEM)  # not misreported as a system-prompt problem
    with pytest.raises(ValueError, match="no chat template"):
        end_of_turn(tok)


def test_template_that_drops_system_prompt_raises() -> None:
    # Some templates skip roles they do not know instead of raising; the prompt would be lost silently.
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}"
        "{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    )
    tok = make_tokenizer(template, eos="<|im_end|>", specials=("<|im_start|>", "<|im_end|>"))
    assert pre_query_prefix(tok) == "<|im_start|>user\n"
    with pytest.raises(ValueError, match="drops the system prompt"):
        pre_query_prefix(tok, SYSTEM)


def test_template_that_rewrites_content_raises() -> None:
    tok = make_tokenizer("{% for m in messages %}{{ 'Q: ' + m['content'] | upper }}{% endfor %}", eos="</s>")
    with pytest.raises(ValueError, match="verbatim"):
        pre_query_prefix(tok)


def test_trimming_template_keeps_prefix_whitespace() -> None:
    # Llama-3 and Gemma trim the content; the prefix still ends with the template's own newlines.
    tok = family_tokenizer(next(f for f in FAMILIES if f.name == "llama3"))
    assert pre_query_prefix(tok).endswith("<|end_header_id|>\n\n")


def test_end_of_turn_falls_back_to_eos_when_nothing_follows_the_user() -> None:
    tok = make_tokenizer("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", bos="<s>", eos="</s>")
    assert pre_query_prefix(tok) == "<s>"
    assert end_of_turn(tok) == "</s>"
    assert stop_strings(tok) == ["</s>"]


def test_mistral_with_control_tokens_keeps_the_space() -> None:
    # Newer Mistral tokenizers make [INST]/[/INST] control tokens; the marker keeps the template's space.
    tok = make_tokenizer(MISTRAL, bos="<s>", eos="</s>", specials=("[INST]", "[/INST]"))
    assert end_of_turn(tok) == " [/INST]"
    assert stop_strings(tok) == ["[/INST]", "</s>"]
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("[/INST]"), tok.convert_tokens_to_ids("</s>")]


def test_encode_prompt_text_does_not_double_bos() -> None:
    tok = make_tokenizer(MISTRAL, bos="<s>", eos="</s>", add_bos=True)
    bos_id = tok.convert_tokens_to_ids("<s>")
    prefix = pre_query_prefix(tok)
    assert tok(prefix)["input_ids"][:2] == [bos_id, bos_id]  # what a naive engine would feed
    ids = encode_prompt_text(tok, prefix)
    assert ids[0] == bos_id and ids.count(bos_id) == 1


def test_pre_query_prefix_is_public_at_package_level(tiny_tokenizer):
    import scalequest

    assert (
        scalequest.pre_query_prefix(tiny_tokenizer)
        == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    assert (
        scalequest.pre_query_prefix(tiny_tokenizer, "Ask math.")
        == "<|im_start|>system\nAsk math.<|im_end|>\n<|im_start|>user\n"
    )
