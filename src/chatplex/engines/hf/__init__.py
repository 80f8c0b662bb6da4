"""The Hugging Face (transformers) engine: continuous batching over a paged KV cache.

    engine.py         the asyncio side: requests in (checked, rendered), deltas and scores out
    core.py           the engine thread: inbox, the verbs of a step, finishing and failing requests
    steps.py          a step's order (overlapped, sync or scoring), chosen at start; phase timing
    setup.py          builds the parts below from the arguments
    streams.py        request streams and delivery to event loops
    output_processor.py  tokens -> text, stop strings, finish reasons, logprobs
    scheduler.py      who runs next, pending-token bookkeeping (no torch)
    block_manager.py  KV block bookkeeping (no torch)
    sequence.py       per-sequence state
    step_inputs.py    a step's inputs on the host (tokens, positions, slots, tables): the one slot formula
    runner.py         runs each step: eager, or through decode_step.py's replayer (CUDA graphs, compiled CPU)
    cuda_graphs.py    decode steps captured per batch bucket
    compiled_layers.py  the captured step compiled a decoder layer at a time (one compile for every layer)
    cpu_decode.py     decode steps on a CPU through one torch.compile'd step (compile: true)
    decode_step.py    what both share: static inputs, the decode-only forward, the runner's interface
    attention.py      the attention function registered with transformers
    paged_decode.py   decode attention through block tables (CPU; CUDA via triton_decode.py's kernel)
    cpu_decode_kernel.py  the CPU's decode attention as csrc/'s C++ kernel, built for the machine at start
    sampler.py        logits -> tokens, per-row settings
    loader.py, kv_cache.py, lora.py, scoring.py, multimodal/   weights, cache, adapters, reward heads, media
    quantization.py   quantized weights (bitsandbytes while loading, checkpoints quantized beforehand)
    fp8_matmul.py     FP8 checkpoints' linear layers on a GPU as one Triton kernel
    compile_cache.py  torch.compile's caches in chatplex's cache folder
    switch_interval.py, fresh_thread.py, heap.py, transfer.py  process-wide and threading helpers (heap: glibc malloc)
docs/ARCHITECTURE.md draws the threads and a request's path.
"""
