"""Readable logs by default, JSON lines (with search_id etc.) when LTRR_LOG_JSON=1."""

from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STD}
        return base + ("  " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


def _not_library_chatter(record: logging.LogRecord) -> bool:
    # onnxruntime's quantizer logs hundreds of INFO lines through the root logger during the
    # one-time ONNX export; they say nothing a user can act on.
    return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


def setup_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_not_library_chatter)
    handler.setFormatter(JsonFormatter() if json_logs else
                         TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
