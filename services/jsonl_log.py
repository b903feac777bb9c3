"""Append-only JSONL logs written off the request path.

Search handlers enqueue records and return; one thread appends them to a per-process file, so a
slow disk never adds to search latency. Files are named by day and process so several API
replicas can share one volume without interleaving partial lines.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class JsonlWriter:
    def __init__(self, directory: Path, stem: str, *, max_queue: int = 100_000):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.q: queue.Queue[str | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"jsonl-{stem}", daemon=True)
        self._thread.start()

    def path_for(self, ts: float) -> Path:
        day = time.strftime("%Y%m%d", time.gmtime(ts))
        return self.dir / f"{self.stem}-{day}-{socket.gethostname()}-{os.getpid()}.jsonl"

    def write(self, line: str) -> None:
        try:
            self.q.put_nowait(line)
        except queue.Full:
            # Never block a search on the log; count what we lose so /metrics shows it.
            self.dropped += 1

    def _run(self) -> None:
        fh = None
        current: Path | None = None
        while True:
            item = self.q.get()
            if item is None:
                break
            path = self.path_for(time.time())
            if path != current:
                if fh:
                    fh.close()
                fh = open(path, "a", encoding="utf-8")
                current = path
            assert fh is not None
            fh.write(item + "\n")
            # Drain what is queued before flushing: one flush per burst, not per record.
            while True:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    fh.flush()
                    fh.close()
                    return
                fh.write(nxt + "\n")
            fh.flush()
        if fh:
            fh.close()

    def close(self, timeout: float = 5.0) -> None:
        self.q.put(None)
        self._thread.join(timeout)


def read_jsonl_dir(directory: Path, stem: str) -> Iterator[tuple[Path, int, str]]:
    """Yields (file, line number, line) over every log file of `stem`, oldest day first."""
    for path in sorted(Path(directory).glob(f"{stem}-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    yield path, i, line
