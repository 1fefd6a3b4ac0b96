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

import functools
import json
import os
import re
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from pathlib import Path

from support.hf_tokenizer import PLAIN_END, PLAIN_START
from support.untrusted import time_limit

DATE_STRING = "26 Jul 2024"  # Llama 3.x's own fallback when the template cannot ask for today's date
# A chat template is code from a model repo. Published ones render a chat in milliseconds into a few KB; these bound
# what a hostile one can ask for (and every error inside one is a one-line ValueError naming its file).
TEMPLATE_CHARS = 1 << 20  # the template's source
RENDER_SECONDS = 5.0  # one rendering
RENDER_CHARS = 1 << 20  # the text one rendering writes, and any one string, list or number it builds


def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py)."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        import jinja2.utils
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

    def too_big(n) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and abs(n) > RENDER_CHARS

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, plus bounds on single operations that could build a huge value in one step (a timer cannot
        stop a C call): 'ab' * 10**9, 2 ** 10**9, '%0999999999d' % 1, 'x'.ljust(10**9), 'x'|center(10**9)."""
        intercepted_binops = frozenset(["+", "*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and len(left) + len(right) > RENDER_CHARS:
                raise jinja2.exceptions.SecurityError(f"'+' would build a value over {RENDER_CHARS:,} long")
            sizes = [len(x) if isinstance(x, (str, list, tuple)) else x for x in (left, right)]
            if operator == "*" and (all(isinstance(x, int) for x in sizes) and
                                    abs(sizes[0]) * abs(sizes[1]) > RENDER_CHARS ** 2 // 64 or
                                    any(isinstance(x, (str, list, tuple)) for x in (left, right)) and
                                    abs(sizes[0] * sizes[1]) > RENDER_CHARS):
                raise jinja2.exceptions.SecurityError(f"'*' would build a value over {RENDER_CHARS:,} long")
            if operator == "**" and isinstance(right, int) and abs(right) > 64 and not abs(left) <= 1:
                raise jinja2.exceptions.SecurityError("'**' with an exponent over 64")
            if operator == "%" and isinstance(left, str) and (re.search(r"\d{6,}|\*", left) or any(
                    too_big(x) for x in (right if isinstance(right, tuple) else (right,)))):
                raise jinja2.exceptions.SecurityError("'%' formatting with a width over a million")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's own signature)
            if any(too_big(x) for x in (*args, *kwargs.values())):
                raise jinja2.exceptions.SecurityError(f"a call with a number over {RENDER_CHARS:,}")
            return super().call(__context, __obj, *args, **kwargs)

    def bounded(f):  # a filter with a number argument over the limit is refused (center, indent, wordwrap, ...)
        @functools.wraps(f)  # keeps jinja2's pass_context/... marks
        def g(*args, **kwargs):
            if any(too_big(x) for x in (*args, *kwargs.values())):
                raise jinja2.exceptions.SecurityError(f"filter {f.__name__} with a number over {RENDER_CHARS:,}")
            return f(*args, **kwargs)
        return g

    class Namespace(jinja2.utils.Namespace):  # the one object a template can grow across loop iterations
        def __setitem__(self, name, value):
            if isinstance(value, (str, list, tuple, dict)) and len(value) > RENDER_CHARS:
                raise jinja2.exceptions.SecurityError(f"namespace.{name} over {RENDER_CHARS:,} long")
            super().__setitem__(name, value)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.filters.update({name: bounded(f) for name, f in env.filters.items()})
    env.globals["namespace"] = Namespace
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A checkpoint's chat template bound to its tokenizer (support/hf_tokenizer.HFTokenizer)."""

    def __init__(self, source: str, tok, date_string: str | None = None, path: str = "chat template") -> None:
        if not isinstance(source, str) or len(source) > TEMPLATE_CHARS:
            raise ValueError(f"{path}: the chat template must be a string under {TEMPLATE_CHARS:,} characters")
        self.source, self.tok, self.path = source, tok, path
        self.date_string = date_string or os.environ.get("REFT_CHAT_DATE") or DATE_STRING
        specials = sorted((t for t, info in tok.added.items() if info.get("special")), key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None

    @cached_property
    def _template(self):
        env = _environment()
        with self._bounded("parsing"):
            return env.from_string(self.source)

    @contextmanager
    def _bounded(self, what: str):
        """RENDER_SECONDS for the block, and any error raised inside the template's code as one line naming it."""
        try:
            with time_limit(RENDER_SECONDS, f"{self.path}: chat template ({what})"):
                yield
        except ValueError as e:
            if str(e).startswith(self.path):
                raise
            raise ValueError(f"{self.path}: chat template ({what}): {e}") from None
        except (Exception, RecursionError) as e:  # jinja2's TemplateError and SecurityError, or the template's own bug
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{self.path}: chat template ({what}): {type(e).__name__}: {first}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The template's text for messages [{"role", "content"}], as apply_chat_template(..., tokenize=False) with
        date_string passed; at most RENDER_CHARS of it, within RENDER_SECONDS."""
        template, out, n = self._template, [], 0
        with self._bounded("rendering"):
            for chunk in template.generate(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                           documents=None, date_string=self.date_string, **self.tok.special_tokens):
                n += len(chunk)
                if n > RENDER_CHARS:
                    raise ValueError(f"{self.path}: chat template (rendering): its text passed {RENDER_CHARS:,} "
                                     "characters: refused")
                out.append(chunk)
        return "".join(out)

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
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    where = str(path) if path.is_file() else str(Path(folder) / "tokenizer_config.json")
    return ChatTemplate(source, tok, path=where) if source else None
