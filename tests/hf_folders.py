"""Tiny stand-ins for today's small instruct checkpoints, built in the tests (no hub is reachable): tokenizer.json
files trained with the `tokenizers` library in the pre-tokenizer configurations of Llama 3.x, Qwen2/2.5, SmolLM2,
GPT-2 and SentencePiece exports, saved with a tokenizer_config.json (and a chat template), beside tiny random
LlamaForCausalLM (llama3 rope scaling) / Qwen2ForCausalLM weights saved by transformers.

The chat templates are the published ones: Llama 3.2's as llama.cpp keeps it (models/templates/
meta-llama-Llama-3.2-3B-Instruct.jinja, fetched from the model's tokenizer_config.json), and ChatML templates written
as Qwen2.5's and SmolLM2's are (their default system messages, without the tool-calling branches).
"""
import json
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFT_SHARED_ASSETS", REPO.parent / "shared" / "assets"))

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3.x's first special tokens, in their order (128000...; here after the tiny vocabulary)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA32_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")

BUILTIN_TEXT = """Once upon a time, there was a little girl named Lily. She loved to play outside in the park.
One day, she saw a big, red ball. "Can I play with it?" she asked. Her mom said, "Yes, you can!" Lily's dog didn't
want to share; they'd run and they'll laugh. It's 3:45 pm on 12/31/2024 and 1,000,000 stars shine. Café, naïve,
Zürich: ½ of ② is Ⅰ. 你好，世界。こんにちは。Привет, мир! Γειά σου κόσμε. مرحبا 👍🏽🙂\tTabs\tand\n\nnewlines.
"""


def training_text() -> str:
    """TinyStories text from ../shared/assets when present, else a built-in paragraph (the suite needs no assets)."""
    path = SHARED / "tinystories" / "sample.txt"
    text = path.read_text(encoding="utf-8")[:200_000] if path.is_file() else BUILTIN_TEXT * 50
    return text + BUILTIN_TEXT  # every script of the test sample appears at least once


def train_tokenizer(family: str, vocab_size: int = 700):
    """A tokenizers.Tokenizer in a family's tokenizer.json configuration, trained on training_text()."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers
    byte_level = family in ("llama3", "qwen2", "smollm2", "gpt2")
    tok = Tokenizer(models.BPE(ignore_merges=family == "llama3", byte_fallback=not byte_level,
                               unk_token=None if byte_level else "<unk>", fuse_unk=not byte_level))
    if family == "llama3":  # Llama 3.x: a Split regex (digits in groups of 3), then bytes
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif family == "qwen2":  # Qwen2/2.5: NFC, a Split regex (single digits), then bytes
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    elif family == "smollm2":  # SmolLM2 (StarCoder-style): single digits, then GPT-2's regex and bytes
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif family == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    else:  # SentencePiece exports: trained on words (fast); their own rules are set after training
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    if byte_level:
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False,
                                      special_tokens=CHATML_SPECIALS if family == "smollm2" else ["<|endoftext|>"]
                                      if family == "gpt2" else [])
    else:
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, limit_alphabet=80,
                                      special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator([training_text()], trainer)
    if family == "llama3":  # specials after the vocabulary, the BOS written by the post-processor
        tok.add_special_tokens(LLAMA3_SPECIALS)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    elif family == "qwen2":  # specials after the vocabulary, no BOS; Qwen2.5's tool tags are added, not special
        tok.add_special_tokens(CHATML_SPECIALS)
        tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                        AddedToken("</tool_call>", special=False, normalized=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    elif family == "smollm2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    elif family.startswith("sentencepiece"):
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        if family == "sentencepiece":  # Llama 2 / Mistral / TinyLlama exports: Metaspace, byte fallback
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        else:  # older exports: Prepend + Replace normalizers, no pre-tokenizer
            tok.pre_tokenizer = None
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        data = json.loads(tok.to_str())  # the <0xXX> byte pieces are ordinary vocabulary in these exports, as in
        data["added_tokens"] = data["added_tokens"][:3]  # sentencepiece: only <unk>, <s>, </s> are special
        tok = Tokenizer.from_str(json.dumps(data))
    return tok


# tokenizer_config.json as the hub repos write it (the chat template inside it, as Llama 3.2 and Qwen2.5 ship it)
TOKENIZER_CONFIGS = {
    "llama3": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
               "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
               "chat_template": LLAMA32_TEMPLATE},
    "qwen2": {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 131072,
              "chat_template": QWEN25_TEMPLATE},
    "smollm2": {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
                "model_max_length": 8192, "chat_template": SMOLLM2_TEMPLATE},
}


def save_tokenizer(tok, folder: Path, family: str, chat: bool = True) -> Path:
    """tokenizer.json + tokenizer_config.json (with the family's chat template unless chat=False)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = dict(TOKENIZER_CONFIGS[family])
    if not chat:
        del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from the default init: matrices N(0, 0.2), norm weights around 1, biases N(0, 0.1): a forgotten
    q/k/v bias shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "norm" in name:
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g) - 0.25)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def build_checkpoint(folder: Path, family: str, seed: int = 0, tie: bool = True, chat: bool = True, layers: int = 2):
    """A folder as the hub has it: config.json + model.safetensors (+ generation_config.json) + tokenizer.json +
    tokenizer_config.json. family llama3 (LlamaForCausalLM, llama3 rope scaling), qwen2 (Qwen2ForCausalLM) or
    smollm2 (LlamaForCausalLM with SmolLM2's tokenizer); `layers` blocks of width 64. -> (the transformers model, the
    tokenizers.Tokenizer)."""
    import transformers
    tok = train_tokenizer(family)
    ids = {s: tok.token_to_id(s) for s in LLAMA3_SPECIALS + CHATML_SPECIALS if tok.token_to_id(s) is not None}
    shape = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(**shape, rope_theta=1000000.0, bos_token_id=ids["<|endoftext|>"],
                                       eos_token_id=ids["<|im_end|>"], use_sliding_window=False, sliding_window=512)
        cls = transformers.Qwen2ForCausalLM
    else:
        end = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]] if family == "llama3" else \
            ids["<|im_end|>"]
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32, "rope_theta": 500000.0} if family == "llama3" else None
        cfg = transformers.LlamaConfig(**shape, rope_parameters=rope, bos_token_id=ids.get("<|begin_of_text|>", 1),
                                       eos_token_id=end)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    model = randomize(cls(cfg), seed)
    model.save_pretrained(folder)
    save_tokenizer(tok, folder, family, chat)
    return model, tok
