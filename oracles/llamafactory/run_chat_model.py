"""LLaMA-Factory's own ChatModel on the embedded SmolLM2 and on tiny random models of other families: the replies and
scores chatplex must equal.

Runs in LLaMA-Factory's environment (`make lf-diff`). For every template whose tokens SmolLM2's vocabulary has
(LLaMA-Factory would add the others as untrained tokens), its ChatModel (Hugging Face backend, float32, greedy)
answers each conversation of tests/fixtures/llamafactory/conversations.json; so does it for every other text template
on a tiny random Llama with that family's tokenizer (tests/templates/lf_tokenizers.py `tiny_family_lm`, which the
test rebuilds identically); with `stage: rm` and a value head
(tests/fixtures/llamafactory/value_head.safetensors), its `get_scores` scores a few texts. The results go to
tests/fixtures/llamafactory/chat_model_replies.json, which tests/test_llamafactory_differential.py compares with
chatplex's replies to the same requests.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixed_date import pin_llamafactory_date  # noqa: E402
from render_goldens import lf_turns  # noqa: E402

MAX_NEW_TOKENS = 24
SCORE_TEXTS = ["The capital of France is Paris.", "The capital of France is Berlin.", "2 + 2 = 4", "Hello"]


def usable_templates(smollm_dir: str) -> list[str]:
    """Templates whose named tokens and stop words SmolLM2's vocabulary already has."""
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    vocab = tokenizer.get_vocab()
    names = []
    for name, t in sorted(TEMPLATES.items()):
        slots = [s for f in (t.format_prefix, t.format_system, t.format_user, t.format_assistant, t.format_observation)
                 for s in f.slots]
        named = [s["token"] for s in slots if isinstance(s, dict)]
        if type(t.mm_plugin).__name__ == "BasePlugin" and all(w in vocab for w in [*t.stop_words, *named]):
            names.append(name)
    return names


def replies(smollm_dir: str, names: list[str], conversations: dict) -> dict:
    from llamafactory.chat import ChatModel

    out: dict = {}
    for name in names:
        model = ChatModel(dict(model_name_or_path=smollm_dir, template=name, infer_backend="huggingface",
                               infer_dtype="float32", do_sample=False, max_new_tokens=MAX_NEW_TOKENS))
        out[name] = {}
        for key, conversation in conversations["chat"].items():
            try:
                turns, system, tools = lf_turns(conversation)
                (r,) = model.chat(turns, system=system, tools=tools)
                out[name][key] = {"text": r.response_text, "prompt_length": r.prompt_length,
                                  "response_length": r.response_length, "finish_reason": r.finish_reason}
            except Exception as e:  # the format refuses the conversation
                out[name][key] = {"error": f"{type(e).__name__}: {e}"}
        del model
    return out


def family_templates(smollm_dir: str) -> list[str]:
    """The text templates whose tokens SmolLM2 lacks: they run on tiny random models of their own families."""
    from llamafactory.data.template import TEMPLATES

    usable = set(usable_templates(smollm_dir))
    return [name for name, t in sorted(TEMPLATES.items())
            if name not in usable and type(t.mm_plugin).__name__ == "BasePlugin"]


def family_replies(smollm_dir: str, names: list[str], conversations: dict) -> dict:
    """Its ChatModel's replies on `lf_tokenizers.tiny_family_lm` models (one per template, built here as the
    test builds it)."""
    sys.path.insert(0, str(REPO / "tests" / "templates"))
    from lf_tokenizers import tiny_family_lm

    out: dict = {}
    for name in names:
        folder = tempfile.mkdtemp(prefix=f"lf-{name}-")
        try:
            tiny_family_lm(name, smollm_dir, folder)
            out.update(replies(folder, [name], conversations))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def scores(smollm_dir: str) -> list[float]:
    from llamafactory.chat import ChatModel

    folder = tempfile.mkdtemp(prefix="lf-rm-")
    try:
        for f in os.listdir(smollm_dir):
            os.symlink(os.path.join(smollm_dir, f), os.path.join(folder, f))
        shutil.copy(REPO / "tests/fixtures/llamafactory/value_head.safetensors", folder)
        model = ChatModel(dict(model_name_or_path=folder, template="smollm2", stage="rm", infer_backend="huggingface",
                               infer_dtype="float32"))
        return [float(s) for s in model.get_scores(SCORE_TEXTS)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(smollm_dir: str, out: Path) -> None:
    conversations = json.loads((REPO / "tests/fixtures/llamafactory/conversations.json").read_text(encoding="utf-8"))
    names = usable_templates(smollm_dir)
    families = family_templates(smollm_dir)
    date = pin_llamafactory_date()
    data = {"llamafactory": version("llamafactory"), "tool_prompt_date": date, "max_new_tokens": MAX_NEW_TOKENS,
            "templates": names,
            "replies": replies(smollm_dir, names, conversations),
            "family_templates": families, "family_replies": family_replies(smollm_dir, families, conversations),
            "score_texts": SCORE_TEXTS, "scores": scores(smollm_dir)}
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(names)} templates x {len(conversations['chat'])} conversations -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
