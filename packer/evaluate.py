"""``packer eval``, ``packer build --eval``: a file's measured quality, on the build side.

The measuring itself (llama-perplexity's definitions) is :mod:`packer.runtime.quality`, run by
the runtime that runs the models, in its hidden ``--packer-eval`` mode, as the quantizer is
(:mod:`packer.quantize`): the same llama.cpp, and none needed in packer's own Python. This module
picks the text, finds the GGUF inside a model.run, starts the runtime and turns what it says
into figures or one-line errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from packer.errors import RuntimeStubError, SourceError, UsageError
from packer.runtime.manifest import Quality
from packer.runtime.quality import FLAG as EVAL_FLAG
from packer.runtime.quality import Figures
from packer.source import gguf_source

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

DEFAULT_CTX = 512  # tokens per window (llama-perplexity's usual -c 512)
DEFAULT_TEXT = "en"
BUILTIN_TEXTS = {"en": "English", "es": "Spanish"}  # packer/data/eval-<key>.txt
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class EvalText:
    key: str  # en | es for a built-in text, else the file's name
    text: str

    @property
    def builtin(self) -> bool:
        return self.key in BUILTIN_TEXTS


def load_text(spec: str | None) -> EvalText:
    """``--text``: a built-in text by its language (en, es; default en) or a UTF-8 file."""
    key = (spec or DEFAULT_TEXT).strip()
    if key.lower() in BUILTIN_TEXTS:
        key = key.lower()
        text = resources.files("packer").joinpath(f"data/eval-{key}.txt").read_text("utf-8")
        return EvalText(key, _body(text))
    path = Path(key).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SourceError(
            f"--text {key} is not UTF-8 text: give a plain-text file, or en or es for a "
            "built-in text"
        ) from None
    except OSError as exc:
        raise SourceError(
            f"cannot read --text {key}: {exc.strerror}; give a text file, or en or es for a "
            "built-in text"
        ) from exc
    return EvalText(path.name, text)


def _body(text: str) -> str:
    """A built-in text without its header (the lines up to the first blank line, '#' each)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[i:]).lstrip("\n")


def gguf_of(path: Path) -> Path:
    """The GGUF to measure: ``path`` itself, or the one inside a model.run (unpacked once into
    packer's cache, where the model.run finds it too)."""
    from packer.runtime.cache import CacheError, ensure_gguf, resolve_cache_dir
    from packer.runtime.payload import BundleError, read_bundle

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except IsADirectoryError:
        raise SourceError(f"{path} is a folder: give a .gguf or model.run file") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    if magic == GGUF_MAGIC:
        return path
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        raise SourceError(
            f"{path} is neither a GGUF file nor a model.run: give a .gguf, or a file made by "
            "packer build"
        ) from exc
    try:
        return ensure_gguf(bundle, resolve_cache_dir())
    except (BundleError, CacheError) as exc:
        raise SourceError(f"cannot unpack the model of {path}: {exc}") from exc


def gguf_type(path: Path) -> str:
    """The GGUF's type (F16, Q4_K_M, ...), "" when unknown."""
    return gguf_source(path, str(path)).gguf_type or ""


@contextlib.contextmanager
def runtime_for_eval() -> Iterator[list[str] | None]:
    """The runtime command ``packer eval``/``compare`` measure with: the shipped runtime's, or
    in a checkout this Python's llama-cpp-python (None: :data:`packer.quantize.UNFROZEN`)."""
    from packer.stub import require_checkout, runtime_command, usable_shipped_stub

    shipped = usable_shipped_stub("cpu")
    if shipped is None:
        require_checkout("cpu")
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="packer-eval-"))
    try:
        yield runtime_command(shipped.path, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    model: Path,
    text: EvalText,
    *,
    ref: Path | None = None,
    ctx: int = DEFAULT_CTX,
    threads: int = 0,
    runtime: list[str] | None = None,
    verbose: bool = False,
    progress: Progress | None = None,
) -> Figures:
    """Measure the GGUF ``model`` on ``text`` (against the GGUF ``ref`` when given) in the
    runtime; one-line :class:`~packer.errors.PackerError` for input the user can fix."""
    from packer.quantize import UNFROZEN

    if ctx < 16:
        raise UsageError(f"--ctx {ctx} is too small: give 128 or more (default {DEFAULT_CTX})")
    job_dir = Path(tempfile.mkdtemp(prefix="packer-eval-job-"))
    try:
        result_file = job_dir / "result.json"
        job = {
            "model": str(model.absolute()),
            "ref": str(ref.absolute()) if ref is not None else None,
            "text": text.text,
            "ctx": ctx,
            "threads": threads,
            "result": str(result_file),
        }
        job_file = job_dir / "job.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        command = [*(runtime or UNFROZEN), EVAL_FLAG, str(job_file)]
        stderr_file = job_dir / "stderr.txt"
        try:
            with open(stderr_file, "w+b") as err:
                proc = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=None if verbose else err,
                    text=True,
                    errors="replace",
                )
                assert proc.stdout is not None
                for line in proc.stdout:
                    bits = line.split()
                    if progress is not None and len(bits) == 3 and bits[0] == "progress":
                        progress(int(bits[1]), int(bits[2]))
                code = proc.wait()
        except OSError as exc:
            raise RuntimeStubError(
                f"cannot start the runtime to measure ({command[0]}: {exc.strerror}): "
                "reinstall packer, or rebuild the runtime with `packer runtime build --force`"
            ) from exc
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {}
        if "error" in result:
            kind = SourceError if result.get("unreadable") else UsageError
            raise kind(str(result["error"]))
        if code != 0 or "figures" not in result:
            lines = stderr_file.read_text("utf-8", "replace").splitlines()
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            why = f": {last}" if last else f" (the runtime exited with status {code})"
            raise SourceError(
                f"llama.cpp could not measure {model.name}{why} (run with --verbose to see "
                "llama.cpp's log)"
            )
        return Figures(**result["figures"])
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def to_quality(figures: Figures, text: EvalText, reference: str) -> Quality:
    """The manifest's record of a measurement against a reference of type ``reference``."""
    if figures.kl_divergence is None or figures.top1 is None or figures.ref_perplexity is None:
        raise ValueError("a manifest's quality needs a measurement against a reference")
    return Quality(
        reference=reference,
        text=text.key,
        ctx=figures.ctx,
        tokens=figures.tokens,
        perplexity=round(figures.perplexity, 4),
        ref_perplexity=round(figures.ref_perplexity, 4),
        kl_divergence=round(figures.kl_divergence, 6),
        top1=round(figures.top1, 6),
    )


def describe(
    figures: Figures, model: Path, model_type: str, ref: Path | None, ref_type: str, text: EvalText
) -> dict[str, object]:
    """What ``packer eval --json`` prints (and its table shows)."""
    out: dict[str, object] = {
        "file": str(model),
        "type": model_type or None,
        "text": text.key,
        "ctx": figures.ctx,
        "chunks": figures.chunks,
        "text_tokens": figures.text_tokens,
        "tokens": figures.tokens,
        "perplexity": round(figures.perplexity, 4),
        "seconds": round(figures.seconds, 2),
        "tokens_per_second": round(figures.tokens_per_second, 1),
    }
    if ref is not None and figures.ref_perplexity is not None:
        out.update(
            reference=str(ref),
            reference_type=ref_type or None,
            ref_perplexity=round(figures.ref_perplexity, 4),
            delta_perplexity=round(figures.perplexity - figures.ref_perplexity, 4),
            kl_divergence=round(figures.kl_divergence or 0.0, 6),
            top1=round(figures.top1 or 0.0, 6),
        )
    return out


def table(info: dict[str, object]) -> list[str]:
    """``packer eval``'s human-readable lines, from :func:`describe`'s dict."""
    name = Path(str(info["file"])).name
    kind = f" ({info['type']})" if info.get("type") else ""
    lines = [
        f"{'file':<14}{name}{kind}",
        f"{'text':<14}{info['text']}: {info['text_tokens']} tokens, {info['chunks']} windows "
        f"of {info['ctx']}, {info['tokens']} scored",
        f"{'perplexity':<14}{info['perplexity']:.4f}",
    ]
    if "reference" in info:
        ref_name = Path(str(info["reference"])).name
        ref_kind = f" ({info['reference_type']})" if info.get("reference_type") else ""
        ref_ppl = float(info["ref_perplexity"])  # type: ignore[arg-type]
        delta = float(info["delta_perplexity"])  # type: ignore[arg-type]
        lines += [
            f"{'reference':<14}{ref_name}{ref_kind}: perplexity {ref_ppl:.4f}",
            f"{'Δ perplexity':<14}{delta:+.4f} ({100 * delta / ref_ppl:+.2f} %)",
            f"{'KL divergence':<14}{float(info['kl_divergence']):.6f}",  # type: ignore[arg-type]
            f"{'top-1':<14}{100 * float(info['top1']):.2f} %",  # type: ignore[arg-type]
        ]
    lines.append(f"{'speed':<14}{info['tokens_per_second']} tokens/s ({info['seconds']} s)")
    return lines
