"""``t2l``: the library's commands plus ``t2l serve``, which runs the HTTP service with uvicorn."""

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from hypernet.cli import main as library_main
from hypernet.errors import T2LError
from hypernet.settings import Settings


def cmd_serve(args: argparse.Namespace, _: Settings) -> None:
    import uvicorn

    from server.app import create_app
    from server.settings import ServerSettings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        raise T2LError(f"invalid setting T2L_{str(first['loc'][0]).upper()}: {first['msg']}") from err
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").addFilter(_NoUserErrorTraceback())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call to vLLM would drown the log
    app = create_app(settings)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    except SystemExit:  # uvicorn exits when start-up fails; say why in one line
        if getattr(app.state, "startup_error", None):
            raise T2LError(app.state.startup_error) from None
        raise


class _NoUserErrorTraceback(logging.Filter):
    """Drop uvicorn's traceback of a start-up failure we report ourselves in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "hypernet.errors.T2LError" not in record.getMessage()


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTP server (OpenAI-compatible chat, adapters API)")
    p.add_argument("--host", help="default: T2L_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: T2L_PORT or 8000")
    p.set_defaults(run=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    return library_main(argv, extend=add_serve)


if __name__ == "__main__":
    sys.exit(main())
