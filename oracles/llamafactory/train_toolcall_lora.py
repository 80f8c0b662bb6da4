"""A LoRA fine-tune of the embedded SmolLM2 that calls tools, trained by LLaMA-Factory itself: what a user brings.

LLaMA-Factory's scripts/api_example/test_toolcall.py needs a model that answers its GPA question with a
`calculate_gpa` call and then words the result; SmolLM2 does neither. This trains one as its users do
(`llamafactory-cli train`, SFT, LoRA rank 8 on q_proj/v_proj, `template: qwen`, so calls are written in the qwen
tool format) on a small set of GPA conversations in its sharegpt form (tools, function_call, observation), and
copies the adapter into tests/fixtures/llamafactory/toolcall_lora/. Runs in LLaMA-Factory's environment
(`make lf-toolcall`); about ten minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "llamafactory" / "toolcall_lora"
GRADE_POINTS = {"A": 4, "B": 3, "C": 2}
# The tool exactly as test_toolcall.py defines it (its function part, as LLaMA-Factory's API passes it on).
TOOL = {
    "name": "calculate_gpa",
    "description": "Calculate the Grade Point Average (GPA) based on grades and credit hours",
    "parameters": {
        "type": "object",
        "properties": {
            "grades": {"type": "array", "items": {"type": "string"}, "description": "The grades"},
            "hours": {"type": "array", "items": {"type": "integer"}, "description": "The credit hours"},
        },
        "required": ["grades", "hours"],
    },
}


def gpa(grades: list[str], hours: list[int]) -> float:
    return round(sum(GRADE_POINTS[g] * h for g, h in zip(grades, hours)) / sum(hours), 2)


def example(grades: list[str], hours: list[int]) -> dict:
    question = f"My grades are {', '.join(grades[:-1])}, and {grades[-1]}. " \
               f"The credit hours are {', '.join(map(str, hours[:-1]))}, and {hours[-1]}."
    call = {"name": "calculate_gpa", "arguments": {"grades": grades, "hours": hours}}
    answer = f"Based on the grades and credit hours you provided, your Grade Point Average (GPA) is {gpa(grades, hours)}."
    return {"conversations": [{"from": "human", "value": question},
                              {"from": "function_call", "value": json.dumps(call)},
                              {"from": "observation", "value": json.dumps({"gpa": gpa(grades, hours)})},
                              {"from": "gpt", "value": answer}],
            "tools": json.dumps([TOOL])}


def dataset() -> list[dict]:
    """test_toolcall.py's own question and 23 others like it (2-5 courses), fixed by the seed."""
    rng = random.Random(0)
    rows = [example(["A", "A", "B", "C"], [3, 4, 3, 2])]
    while len(rows) < 24:
        n = rng.randint(2, 5)
        rows.append(example([rng.choice("ABC") for _ in range(n)], [rng.randint(1, 5) for _ in range(n)]))
    return rows


def main(smollm_dir: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        data.mkdir()
        (data / "gpa_tools.json").write_text(json.dumps(dataset(), indent=1))
        (data / "dataset_info.json").write_text(json.dumps({"gpa_tools": {
            "file_name": "gpa_tools.json", "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"}}}))
        config = {
            "model_name_or_path": smollm_dir, "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "lora_rank": 8, "lora_target": "q_proj,v_proj", "dataset": "gpa_tools", "dataset_dir": str(data),
            "template": "qwen", "cutoff_len": 1024, "output_dir": str(Path(work) / "out"),
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
            "num_train_epochs": 12, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "logging_steps": 6,
            "save_strategy": "no", "report_to": "none", "seed": 0, "bf16": False, "fp16": False,
            "overwrite_output_dir": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
        }
        import yaml

        (Path(work) / "train.yaml").write_text(yaml.safe_dump(config))  # its parser reads .json configs wrongly
        cli = shutil.which("llamafactory-cli", path=os.path.dirname(sys.executable))
        subprocess.run([cli, "train", str(Path(work) / "train.yaml")], check=True,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "DISABLE_VERSION_CHECK": "1"})
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(Path(work) / "out" / name, OUT / name)
        config_json = json.loads((OUT / "adapter_config.json").read_text())
        config_json["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not this machine's path
        (OUT / "adapter_config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    print(f"adapter -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
