"""LLaMA-Factory's scripts/api_example/test_image.py, unchanged, against `llamafactory-cli api` and `chatplex api`.

The script asks about two pictures at https://qianwen-res.oss-cn-beijing.aliyuncs.com/Qwen2-VL/ and both servers
fetch them themselves. This machine reaches no such host, so for the run the name points at a local HTTPS server
with stand-in pictures: /etc/hosts gets the name on 1.2.3.4 (a public address, so both servers' private-address
guards let it through), 1.2.3.4 is added to the loopback interface, a self-signed certificate for the name is made
with openssl and trusted through REQUESTS_CA_BUNDLE (LLaMA-Factory's requests) and SSL_CERT_FILE (chatplex).
Needs root; /etc/hosts and the interface are put back afterwards.

Usage (as root, from the repository root, after `make install-lf install-media`):
    .venv-media/bin/python oracles/llamafactory/run_image_example.py SCRIPT
where SCRIPT is test_image.py from a LLaMA-Factory checkout. Both servers serve the same tiny random Qwen2-VL
(`template: qwen2_vl`, float32, greedy, 32 new tokens); it prints both outputs and whether they are identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run_api_server import wait

REPO = Path(__file__).resolve().parents[2]
HOST, ADDRESS = "qianwen-res.oss-cn-beijing.aliyuncs.com", "1.2.3.4"
SERVE = """
import functools, http.server, ssl, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer((sys.argv[2], 443), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def pictures(www: Path) -> None:
    """Stand-ins for boxes.png (numbered coloured boxes) and flowers.jpg (noise)."""
    import numpy as np
    from PIL import Image, ImageDraw

    (www / "Qwen2-VL").mkdir(parents=True)
    boxes = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(boxes)
    for i, (colour, (x, y)) in enumerate([("red", (80, 300)), ("blue", (260, 300)), ("green", (440, 300)),
                                          ("orange", (170, 140)), ("purple", (350, 140))]):
        draw.rectangle([x, y, x + 140, y + 140], fill=colour)
        draw.text((x + 60, y + 60), str(i + 1), fill="white")
    boxes.save(www / "Qwen2-VL" / "boxes.png")
    noise = np.random.default_rng(1).integers(0, 256, (420, 560, 3), dtype=np.uint8)
    Image.fromarray(noise).save(www / "Qwen2-VL" / "flowers.jpg", quality=90)


def tiny_qwen2_vl(path: Path) -> None:
    """The tiny random Qwen2-VL of the media goldens, with a whole processor (both servers load it as one)."""
    import json

    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor,
    )

    sys.path.insert(0, str(REPO))
    from chatplex.models.embedded import embedded_model_dir
    from tests.engines.hf.multimodal_testing import qwen2vl_config
    from tests.templates.lf_tokenizers import build_tokenizer

    golden = json.loads((REPO / "tests/fixtures/llamafactory/mm_goldens.json").read_text())["families"]["qwen2_vl"]
    tok = build_tokenizer(golden["tokenizer"], embedded_model_dir())
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    config = qwen2vl_config(len(tok), ids, tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=112 * 112), tokenizer=tok,
                     video_processor=Qwen2VLVideoProcessor()).save_pretrained(path)


def run_script(script: str, port: int, server: subprocess.Popen) -> str:
    wait(f"http://127.0.0.1:{port}", server)  # both answer /v1/models once the model is loaded
    env = {**os.environ, "API_PORT": str(port)}
    try:
        done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return done.stdout if done.returncode == 0 else f"exit {done.returncode}\n{done.stderr[-2000:]}"


def main(script: str) -> None:
    work = Path(tempfile.mkdtemp())
    hosts = Path("/etc/hosts").read_text()
    pictures(work / "www")
    tiny_qwen2_vl(work / "model")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"],
                   check=True, capture_output=True)
    subprocess.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
    Path("/etc/hosts").write_text(hosts + f"\n{ADDRESS} {HOST}\n")
    images = subprocess.Popen([sys.executable, "-c", SERVE, work / "www", ADDRESS, cert, key])
    args = ["--model_name_or_path", str(work / "model"), "--template", "qwen2_vl", "--infer_backend", "huggingface",
            "--infer_dtype", "float32", "--do_sample", "false", "--max_new_tokens", "32"]
    try:
        lf_cli = shutil.which("llamafactory-cli", path=str(REPO / ".venv-lf/bin"))
        lf = subprocess.Popen([lf_cli, "api", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "API_HOST": "127.0.0.1", "API_PORT": "8411", "API_VERBOSE": "0",
                                   "REQUESTS_CA_BUNDLE": str(cert), "DISABLE_VERSION_CHECK": "1"})
        theirs = run_script(script, 8411, lf)
        ours = subprocess.Popen([str(REPO / ".venv/bin/chatplex"), "api", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "API_HOST": "127.0.0.1",
                                                                "API_PORT": "8412", "SSL_CERT_FILE": str(cert)})
        mine = run_script(script, 8412, ours)
    finally:
        images.terminate()
        Path("/etc/hosts").write_text(hosts)
        subprocess.run(["ip", "addr", "del", f"{ADDRESS}/32", "dev", "lo"], check=False)
    print("llamafactory-cli api:\n" + theirs + "\nchatplex api:\n" + mine)
    print("identical" if theirs == mine else "DIFFERENT")


if __name__ == "__main__":
    main(sys.argv[1])
