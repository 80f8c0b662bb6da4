"""`chatplex chat`: an interactive chat in the terminal, streamed through `ChatModel.stream_chat`.

Commands at the prompt: `clear` forgets the history, `exit` (or Ctrl-D) quits. Ctrl-C during a reply stops it
(closing the stream aborts generation in the engine) and keeps what was printed as the assistant's turn; Ctrl-C
at the prompt gives a new prompt line, twice in a row it quits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Self, TextIO

from chatplex.cli.options import add_model_options, model_args_from
from chatplex.errors import ChatplexError, ConfigError, InvalidRequestError, UnsupportedFeatureError
from chatplex.types import Message

try:  # line editing and history for input(); absent on some platforms, and input() works without it
    import readline  # noqa: F401
except ImportError:  # pragma: no cover
    pass

USER_PROMPT = "User: "
ASSISTANT_PREFIX = "Assistant: "
STOPPED_MARK = " [stopped]"
COMMANDS_HELP = "Type `clear` to forget the history, `exit` or Ctrl-D to quit; Ctrl-C stops a reply."

EPILOG = """\
commands at the User: prompt:
  clear        forget the conversation history
  exit         quit (Ctrl-D does the same)
  Ctrl-C       during a reply: stop it; the part already printed stays in the history as the
               assistant's turn. At the prompt: a new line; twice in a row: quit.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with a model in the terminal: replies stream as they are generated.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    g = parser.add_argument_group("chat")
    g.add_argument("--tools", metavar="FILE.json", help="a JSON file with a list of tool (function) definitions")
    g.add_argument("--show-prompt", action="store_true", help="print the rendered prompt before each reply")
    parser.set_defaults(run=run)
    return parser


def run(ns: argparse.Namespace) -> int:
    """Load the model, then chat until `exit`, EOF or a second Ctrl-C. Returns the exit status."""
    from chatplex.chat_model import ChatModel
    from chatplex.config import load_args

    tools = load_tools(ns.tools)
    args = model_args_from(ns)
    load_args(args)  # bad keys and paths fail here, before the "Loading" line
    print(f"Loading {args.get('model_name_or_path') or 'the embedded model'}...", flush=True)
    try:
        model = ChatModel(args)
    except ChatplexError:
        raise  # main() prints it and exits 2
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - transformers' OSError/ValueError for a directory that holds no model, etc.
        detail = " ".join(str(e).split())[:300] or type(e).__name__  # one line, however long the library's text
        source = args.get("model_name_or_path") or "the embedded model"
        print(f"chatplex chat: error: model_name_or_path: could not load {source!r}: {detail}", file=sys.stderr)
        return 2
    try:
        print(f"{model.model_name} ({model.args.model.infer_backend}). {COMMANDS_HELP}", flush=True)
        return ChatSession(model, tools=tools, show_prompt=ns.show_prompt).loop()
    except KeyboardInterrupt:  # only reachable outside a reply and the prompt, e.g. while printing the banner
        return 130
    finally:
        model.close()


def load_tools(path: str | None) -> list[dict[str, Any]] | None:
    """Read `--tools FILE.json` before loading the model, so a bad file fails fast."""
    from chatplex.messages import validate_tools

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"--tools: cannot read {path!r}: {e.strerror}.", param="tools") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--tools: {path!r} is not valid JSON: {e}.", param="tools") from None
    try:
        return validate_tools(data)
    except InvalidRequestError as e:
        raise ConfigError(f"--tools {path!r}: {e}", param="tools") from None


class ChatSession:
    """The read-reply loop over one loaded model; holds the conversation history."""

    def __init__(
        self,
        model: Any,
        *,
        tools: list[dict[str, Any]] | None = None,
        show_prompt: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.model = model
        self.tools = tools
        self.show_prompt = show_prompt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.history: list[Message] = []

    def loop(self) -> int:
        interrupted = False  # the previous prompt ended in Ctrl-C: a second one quits
        while True:
            try:
                line = input(USER_PROMPT)
            except EOFError:
                self._say("")
                return 0
            except KeyboardInterrupt:
                if interrupted:
                    self._say("")
                    return 0
                interrupted = True
                self._say("\n(Ctrl-C again, `exit` or Ctrl-D to quit)")
                continue
            interrupted = False
            text = line.strip()
            if not text:
                continue
            if text == "exit":
                return 0
            if text == "clear":
                self.history.clear()
                self._say("History cleared.")
                continue
            try:
                self.turn(text)
            except KeyboardInterrupt:  # a second Ctrl-C while the first was still being handled
                self._say(STOPPED_MARK)
                if self.history and self.history[-1]["role"] == "user":
                    self.history.pop()  # keep user and assistant turns alternating

    def turn(self, text: str) -> None:
        """Stream one reply to `text`; on success or Ctrl-C the exchange joins the history, on error it does not."""
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        stream = None
        try:
            if self.show_prompt:
                self._print_prompt()
            self.out.write(ASSISTANT_PREFIX)
            self.out.flush()
            stream = self.model.stream_chat(self.history, tools=self.tools)
            with ReplyInterrupt() as interrupt:
                for piece in interrupt.pieces(stream):
                    parts.append(piece)
                    self.out.write(piece)
                    self.out.flush()
            self._say("")
        except KeyboardInterrupt:
            self._say(STOPPED_MARK)
        except ChatplexError as e:
            self._say("")
            print(f"error: {e}", file=self.err, flush=True)
            self.history.pop()
            return
        finally:
            if stream is not None:
                stream.close()  # aborts the request in the engine if it is still running
        if parts:
            self.history.append({"role": "assistant", "content": "".join(parts)})
        else:
            self.history.pop()  # nothing was said: forget the question too, so turns keep alternating

    def _print_prompt(self) -> None:
        try:
            prompt = self.model.render_prompt(self.history, tools=self.tools)
        except UnsupportedFeatureError:
            self._say("(this engine renders the prompt remotely; nothing to show)")
            return
        self._say(f"--- prompt ---\n{prompt}\n--- end of prompt ---")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class ReplyInterrupt:
    """Ctrl-C during a reply, made exact: SIGINT raises KeyboardInterrupt only while we wait for the engine's
    next piece; anywhere else it is deferred to the next piece. So no piece is ever half printed, and the
    partial reply kept in the history is exactly what the user saw.
    """

    def __init__(self) -> None:
        self.waiting = False
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.waiting:
            raise KeyboardInterrupt
        self.requested = True

    def pieces(self, stream: Iterable[str]) -> Iterator[str]:
        """The stream's pieces until it ends; raises KeyboardInterrupt at the first piece after a Ctrl-C."""
        it = iter(stream)
        while not self.requested:
            self.waiting = True
            try:
                piece = next(it)
            except StopIteration:
                return
            finally:
                self.waiting = False
            yield piece
        raise KeyboardInterrupt
