"""Export the keys LLaMA-Factory's inference parser reads, for tests/test_llamafactory_keys' completeness check.

Runs in LLaMA-Factory's environment (`make lf-goldens`): every field of the dataclasses its `get_infer_args` parses
(`hparams.parser._INFER_ARGS`), with the dataclass that holds it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from importlib.metadata import version
from pathlib import Path

from llamafactory.hparams import parser


def main(out: Path) -> None:
    keys: dict[str, str] = {}
    for cls in parser._INFER_ARGS:
        for f in dataclasses.fields(cls):
            keys.setdefault(f.name, cls.__name__)
    data = {"note": "The keys LLaMA-Factory's inference parser reads (hparams.parser._INFER_ARGS), by dataclass.",
            "llamafactory": version("llamafactory"), "keys": keys}
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{len(keys)} keys -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
