"""Chat templates: an instruct checkpoint's own Jinja template (tokenizer_config.json's "chat_template", or the
chat_template.jinja file transformers >= 4.43 writes), rendered as transformers' apply_chat_template renders it, and
tokenized with the template's control tokens matched while the messages' own text stays plain text.

`jinja2` is an optional dependency, imported only when a template is rendered. The environment is transformers':
a sandbox (ImmutableSandboxedEnvironment: templates come from model repos, so they are untrusted code), trim_blocks
and lstrip_blocks, loop controls, its `tojson`, `raise_exception` and `strftime_now`. Templates that print today's
date (Llama 3.x: "Cutting Knowledge Date: December 2023 / Today Date: ...") get a fixed `date_string` instead, so
that a prompt is the same at training and at generation: DATE_STRING, or $REFT_CHAT_DATE ("26 Jul 2024" format).

A record becomes one user turn (data.py: the instruction, a newline and the input); the template adds its default
system block (Llama 3.x's dates, Qwen2.5's "You are Qwen, ...", SmolLM2's "You are a helpful AI assistant named
SmolLM, ...") and the assistant header (add_generation_prompt). The response is the assistant's text followed by the
token that ends the turn (`end_id`: <|eot_id|>, <|im_end|>), found by rendering a two-turn chat.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from functools import cached_property
from pathlib import Path

from support.hf_tokenizer import PLAIN_END, PLAIN_START

DATE_STRING = "26 Jul 2024"  # Llama 3.x's own fallback when the template cannot ask for today's date


def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py)."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need the jinja2 package: pip install jinja2") from None
    if tuple(map(int, re.findall(r"\d+", jinja2.__version__)[:3])) < (3, 1, 6):  # older ones have sandbox escapes
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (templates from model repos are untrusted code), "
                          f"not {jinja2.__version__}: pip install -U jinja2")

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} renders its body (transformers also records where, for its
        assistant-token masks, which training here does not need)."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # no HTML escaping
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A checkpoint's chat template bound to its tokenizer (support/hf_tokenizer.HFTokenizer)."""

    def __init__(self, source: str, tok, date_string: str | None = None) -> None:
        self.source, self.tok = source, tok
        self.date_string = date_string or os.environ.get("REFT_CHAT_DATE") or DATE_STRING
        specials = sorted((t for t, info in tok.added.items() if info.get("special")), key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None

    @cached_property
    def _template(self):
        return _environment().from_string(self.source)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The template's text for messages [{"role", "content"}], as apply_chat_template(..., tokenize=False) with
        date_string passed."""
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                     documents=None, date_string=self.date_string, **self.tok.special_tokens)

    def _mark(self, text: str) -> str:
        """Special-token strings in a message wrapped in PLAIN_START/PLAIN_END, so that encode_template keeps them
        plain text (markers already in the text are dropped first, so none can be forged)."""
        text = text.replace(PLAIN_START, "").replace(PLAIN_END, "")
        return self._specials.sub(lambda m: PLAIN_START + m.group() + PLAIN_END, text) if self._specials else text

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat: the template's control tokens (BOS included, if it writes one) matched, the
        messages' own text plain. Equals apply_chat_template(messages, add_generation_prompt, tokenize=True) when the
        messages hold no special-token strings."""
        marked = [{**m, "content": self._mark(m["content"])} for m in messages]
        return self.tok.encode_template(self.render(marked, add_generation_prompt))

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        """One user turn (after `system`, else the template's default system block) and the assistant's header."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": user}]
        return self.encode(messages, add_generation_prompt=True)

    @cached_property
    def end_id(self) -> int:
        """The token that ends an assistant turn: the first special token after the assistant's text in a rendered
        two-turn chat (<|eot_id|> for Llama 3.x, <|im_end|> for ChatML templates such as Qwen2.5's and SmolLM2's)."""
        probe = "PROBE"
        text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}],
                           add_generation_prompt=False)
        at = text.rfind(probe)
        after = self.tok.encode_template(text[at + len(probe):]) if at >= 0 else []
        end = next((i for i in after if i in self.tok.special_ids), None)
        if end is None:
            raise ValueError("the chat template ends an assistant turn without a special token; cannot tell where a "
                             "response ends")
        return end


def load_chat_template(folder: str | Path, config: dict, tok) -> ChatTemplate | None:
    """The folder's chat template (chat_template.jinja first, as transformers reads it; else tokenizer_config.json's
    "chat_template", a string or a list of named templates, "default" taken), or None."""
    path = Path(folder) / "chat_template.jinja"
    source = path.read_text(encoding="utf-8") if path.is_file() else config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    return ChatTemplate(source, tok) if source else None
