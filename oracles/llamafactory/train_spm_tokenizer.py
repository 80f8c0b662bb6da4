"""Train the small SentencePiece-style tokenizer the LLaMA-Factory goldens use for SentencePiece families.

The real Llama 2 / Mistral / Gemma tokenizers cannot be downloaded here. What matters for their formats is
SentencePiece's word-boundary marker: every separately encoded piece starts with "▁", which is why LLaMA-Factory's
piece-by-piece encoding differs from encoding the joined prompt. A Metaspace BPE trained on this repository's
own text (English, code, the Chinese of LLaMA-Factory's tool prompts) has that behaviour. Run once; the result is
committed (tests/fixtures/llamafactory/spm/tokenizer.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenizers import SentencePieceBPETokenizer

REPO = Path(__file__).resolve().parents[2]


def corpus() -> list[str]:
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "src/chatplex/templates/llamafactory/formats.json"]
    files += sorted((REPO / "tests/fixtures/chat_templates").glob("*.jinja"))
    # Paragraphs, not lines, so that newlines are learnt like any other character.
    return [para for f in files for para in f.read_text(encoding="utf-8").split("\n\n") if para.strip()]


def main(out: Path) -> None:
    tok = SentencePieceBPETokenizer(unk_token="<unk>")
    tok.train_from_iterator(corpus(), vocab_size=4000, min_frequency=2, special_tokens=["<unk>"],
                            initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\t"], show_progress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    print(f"{tok.get_vocab_size()} tokens -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
