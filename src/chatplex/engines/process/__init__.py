"""The Hugging Face engine in a process of its own, behind a frontend that speaks chatplex's Engine interface.

Why: in one process the HTTP event loop (JSON, SSE, a coroutine wake per stream per step) and the engine thread
(scheduling, input staging, detokenizing) share one interpreter lock, and at high token rates on a GPU the engine
waits for it (issue 15: ~74% of in-process throughput over HTTP on a 1B model). vLLM moved its engine core into its
own process for the same reason.

The split (engine_process: true; `chatplex serve` turns it on for the Hugging Face engine when a GPU is there):
  frontend (client.ProcessEngine)   HTTP, request checks, chat template and tokenization (prompt token ids go to the
                                    engine; media requests go whole, their media is prepared beside the model),
                                    output parsing (tools, reasoning), SSE
  engine process (child.py)         HFEngine as in-process: admission, scheduler, model, sampling, detokenizing and
                                    stop strings, grammar masks

Detokenizing and stop strings stay beside the scheduler: a stop string must end its sequence before the next step
is scheduled (one frontend round trip per stop would cost a step of wasted tokens), and grammar masks and penalties
need the tokens there anyway; the frontend receives text.

IPC (wire.py): one Unix socket in a private temporary folder, length-prefixed pickle frames (both ends are this
package in the same environment; the socket's folder is the user's own). One frame per engine step carries every
delta of that step, so the frontend wakes each event loop once per step, as in-process delivery does. Pickle over a
socket is what the standard library gives for Python objects between two trusted processes; ZeroMQ would add a
dependency for the same single connection.

Failure: the frontend's receiver thread sees the socket close when the engine process dies; every open request
ends with an EngineError, later ones are refused, `healthy` turns false (GET /health answers 503) and `on_exit`
runs (`chatplex serve` stops and exits 1, so a supervisor restarts it). The engine process ignores SIGINT and
SIGTERM (a drain must not lose it) and exits when its frontend closes the socket or dies.
"""
