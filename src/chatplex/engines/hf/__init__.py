"""The Hugging Face (transformers) engine: continuous batching over a paged KV cache.

    engine.py         wiring: the step thread, request lifecycle, scores and adapters
    setup.py          builds the parts below from the arguments
    streams.py        request streams and delivery to event loops
    output_processor.py  tokens -> text, stop strings, finish reasons, logprobs
    scheduler.py      who runs next (no torch)
    block_manager.py  KV block bookkeeping (no torch)
    sequence.py       per-sequence state
    loader.py         model, tokenizer and dtype
    kv_cache.py       the KV tensors
    attention.py      the attention function registered with transformers
    runner.py         the only code that runs the model
    sampler.py        logits -> tokens, per-row settings
"""
