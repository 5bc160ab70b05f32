"""``packer usb DEST FILE...``: copy model files onto a mounted USB stick, ready for a class.

Everything is checked before the first byte is written: DEST is a writable folder, each FILE
is a model.run with all its parts, and the stick has room for all of it. On FAT32 (which holds
no file over 4 GiB - 1) a bigger model is split on the way (:func:`packer.pack.write_model`,
the writer of ``packer build --split``: same payload bytes, a new manifest listing the parts);
exFAT, NTFS and the Linux filesystems get plain copies. Each model is written atomically
(temp names, fsync, renamed into place when complete: its parts first, model.run last), so a
full stick or an error leaves no half-written file. Then ``README.txt`` (English), ``LEEME.txt``
(Spanish) and ``SHA256SUMS`` (every file written, parts included, merged with the entries of
an earlier run for files still there: ``sha256sum -c SHA256SUMS`` checks the stick).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from packer.errors import OutputError, SourceError, UsageError
from packer.mounts import Mount, mount_of
from packer.pack import EXECUTABLE, Head, PayloadSink, remove_stale_parts, write_model
from packer.runtime.atomic_write import atomic_write
from packer.runtime.errors import BundleError
from packer.runtime.manifest import Manifest
from packer.runtime.payload import (
    Bundle,
    PayloadReader,
    part_name,
    payload_pieces,
    read_bundle,
)
from packer.runtime.progress import ProgressBar
from packer.runtime.sizes import format_size

log = logging.getLogger(__name__)

CHUNK = 8 << 20
SUMS = "SHA256SUMS"
README = "README.txt"
LEEME = "LEEME.txt"
SLACK = 1 << 20  # per model: a new manifest may grow; the text files


@dataclass
class Planned:
    """One model to put on the stick: the source, its files, and whether it is re-split."""

    bundle: Bundle
    sources: list[Path]  # model.run and its parts, as they are now
    size: int  # bytes on the stick (estimated when split)
    split: int | None  # re-split into parts of at most this size (FAT32)


def check_dest(dest: Path) -> Mount | None:
    """DEST must be an existing, writable folder; returns its mount (None: unknown)."""
    if not dest.exists():
        raise UsageError(f"{dest} does not exist: give the folder where the USB stick is mounted")
    if not dest.is_dir():
        raise UsageError(f"{dest} is not a folder: give the folder where the USB stick is mounted")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise OutputError(
            f"{dest} is not writable (a stick mounted read-only, or locked?): remount it "
            "read-write and try again"
        )
    return mount_of(dest)


def plan_copy(files: list[Path], max_file: int | None) -> list[Planned]:
    """Read each FILE (a model.run; its parts are found next to it); split what exceeds
    ``max_file``. One line for the first file that is no model or misses a part."""
    planned: list[Planned] = []
    names: set[str] = set()
    for path in files:
        if not path.is_file():
            raise SourceError(f"{path} is not a file: give model.run files to copy")
        try:
            bundle = read_bundle(path)
            pieces = payload_pieces(bundle)
        except BundleError as exc:
            raise SourceError(f"{path}: {exc}") from exc
        if path.name in names:
            raise UsageError(
                f"two files are named {path.name}: rename one (the stick is one folder)"
            )
        names.add(path.name)
        sources = [path] + [p.path for p in pieces if p.path != path]
        sizes = [s.stat().st_size for s in sources]
        split = max_file if max_file is not None and max(sizes) > max_file else None
        planned.append(Planned(bundle, sources, sum(sizes) + (SLACK if split else 0), split))
    return planned


def copy_to_usb(
    dest: Path,
    files: list[Path],
    *,
    max_file: int | None | bool = True,
) -> list[Path]:
    """Copy ``files`` onto ``dest``; returns the paths written. ``max_file``: True = the
    destination filesystem's limit (FAT32: 4 GiB - 1), None = none, or a number (tests)."""
    mount = check_dest(dest)
    limit = (mount.max_file if mount else None) if max_file is True else max_file
    assert limit is not True
    planned = plan_copy(files, limit)  # type: ignore[arg-type]
    needed = sum(p.size for p in planned) + SLACK
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise OutputError(
            f"not enough space on {dest}: {format_size(needed)} needed, {format_size(free)} "
            "free; nothing was copied (free space on the stick or copy fewer models)"
        )
    for item in planned:
        if not item.split:  # a re-split checks the source's checksums on the way
            _check_source(item.bundle.path)
    kind = f"{mount.fstype} at {mount.point}" if mount else "unknown filesystem"
    log.info("copying %d model(s), %s, to %s (%s)", len(planned), format_size(needed), dest, kind)
    sums: dict[str, str] = {}
    written: list[Path] = []
    total = sum(p.size for p in planned)
    try:
        with ProgressBar(total, f"copying to {dest.name or dest}") as bar:
            for item in planned:
                if item.split:
                    written += _write_split(dest, item, sums, bar)
                else:
                    written += _write_copies(dest, item, sums, bar)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            what = "the stick is full" if exc.errno == errno.ENOSPC else "a file is too big for it"
            raise OutputError(
                f"cannot finish copying to {dest}: {what}; the model being copied was not left "
                "half-written: free space, or copy fewer models"
            ) from exc
        raise OutputError(f"cannot write to {dest}: {exc.strerror}") from exc
    models = [read_bundle(dest / p.bundle.path.name) for p in planned]  # as on the stick
    written += _write_texts(dest, models, sums)
    return written


def _check_source(path: Path) -> None:
    """A model copied as it is must match the checksums recorded when it was built (launcher,
    runtime, manifest, every part, the compressed model: not decompressed), or a damaged file
    would get fresh SHA256SUMS lines on the stick. One line naming what is damaged."""
    from packer.runtime.verify import verify

    lines: list[str] = []
    if not verify(path, lines.append, decompress=False):
        bad = next((line for line in lines if "DAMAGED" in line), lines[-1] if lines else "")
        raise SourceError(
            f"{path} is damaged ({bad.strip()}): nothing was copied; build it again or copy it "
            "from an undamaged source"
        )


def _copy_file(src: Path, dst_stack: contextlib.ExitStack, target: Path, bar: ProgressBar) -> str:
    h = hashlib.sha256()
    mode = EXECUTABLE if os.access(src, os.X_OK) else None
    fh = dst_stack.enter_context(atomic_write(target, mode=mode))
    with open(src, "rb") as s:
        while chunk := s.read(CHUNK):
            fh.write(chunk)
            h.update(chunk)
            bar.advance(len(chunk))
    return h.hexdigest()


def _write_copies(dest: Path, item: Planned, sums: dict[str, str], bar: ProgressBar) -> list[Path]:
    """model.run and its parts as they are, parts first; none renamed unless all are written.
    A part keeps its name relative to model.run (``<name>.partN``)."""
    main = item.sources[0]
    out: list[Path] = []
    with contextlib.ExitStack() as stack:
        targets = [dest / main.name] + [
            dest / part_name(main.name, i) for i in range(2, len(item.sources) + 1)
        ]
        digests = [
            _copy_file(src, stack, target, bar)
            for src, target in zip(item.sources, targets, strict=True)
        ]
        # the stack renames in reverse order: the parts, then model.run
    for target, digest in zip(targets, digests, strict=True):
        sums[target.name] = digest
        out.append(target)
    remove_stale_parts(dest / main.name, len(item.sources) - 1)
    return out


def _write_split(dest: Path, item: Planned, sums: dict[str, str], bar: ProgressBar) -> list[Path]:
    """Re-split a model too big for the stick: the same head and payload bytes, parts of at
    most ``item.split`` bytes, a new manifest. The source's recorded checksums are checked
    on the way (a damaged source is not blessed with new ones)."""
    bundle = item.bundle
    m = bundle.manifest
    head = Head(
        bundle.path,
        bundle.payload_offset,
        (bundle.runtime_offset, bundle.runtime_size, bundle.runtime_key),
    )
    pieces = payload_pieces(bundle)

    def fill(sink: PayloadSink) -> dict[str, object]:
        reader = PayloadReader(pieces, progress=bar.advance)
        try:
            while chunk := reader.read(CHUNK):
                sink.write(chunk)
            reader.finish()
        except BundleError as exc:
            raise SourceError(f"{bundle.path}: {exc}") from exc
        finally:
            reader.close()
        if m.payload_sha256 and reader.digest.hexdigest() != m.payload_sha256:
            raise SourceError(
                f"{bundle.path} is damaged (its model's checksum does not match): "
                "nothing was copied; build it again"
            )
        return {}

    target = dest / bundle.path.name
    source_manifest = dataclasses.replace(m, parts=())
    full: Manifest = write_model(target, head, fill, source_manifest, split=item.split)
    for key in ("launcher_sha256", "runtime_sha256"):
        recorded = getattr(m, key)
        if recorded and getattr(full, key) != recorded:
            for f in [target] + [dest / p.name for p in full.parts]:
                with contextlib.suppress(OSError):
                    f.unlink()
            raise SourceError(
                f"{bundle.path} is damaged (its {key.split('_')[0]} does not match its "
                "checksum): nothing was copied; build it again"
            )
    bar.advance(head.size)
    sums[target.name] = _sha256(target)
    out = [target]
    for part in full.parts:
        sums[part.name] = part.sha256
        out.append(dest / part.name)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_sums(dest: Path) -> dict[str, str]:
    try:
        text = (dest / SUMS).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        name = name.removeprefix("*")
        if sep and len(digest) == 64 and "/" not in name and (dest / name).is_file():
            out[name] = digest
    return out


def _write_texts(dest: Path, models: list[Bundle], sums: dict[str, str]) -> list[Path]:
    """README.txt, LEEME.txt and SHA256SUMS, covering the models of earlier runs still there."""
    earlier = _read_sums(dest)
    for name in earlier:
        if name not in sums and not any(name == b.path.name for b in models):
            with contextlib.suppress(BundleError):
                models.append(read_bundle(dest / name))
    for name in (README, LEEME):
        earlier.pop(name, None)
    texts = {README: readme_en(models), LEEME: readme_es(models)}
    out = []
    for name, text in texts.items():
        data = text.encode("utf-8")
        with atomic_write(dest / name) as fh:
            fh.write(data)
        sums[name] = hashlib.sha256(data).hexdigest()
        out.append(dest / name)
    merged = {**earlier, **sums}
    lines = "".join(f"{merged[n]}  {n}\n" for n in sorted(merged))
    with atomic_write(dest / SUMS) as fh:
        fh.write(lines.encode("utf-8"))
    out.append(dest / SUMS)
    return out


# -- the texts on the stick ------------------------------------------------------------------


def _files_of(b: Bundle) -> str:
    m = b.manifest
    if not m.parts:
        return b.path.name
    return f"{b.path.name} + " + ", ".join(
        part_name(b.path.name, i) for i in range(2, len(m.parts) + 2)
    )


def _licence(m: Manifest) -> str:
    """The licence's name (the model card's ``license_name``), else its id."""
    return m.license_name or m.license or ""


def readme_en(models: list[Bundle]) -> str:
    lines = [
        "AI models that run offline",
        "==========================",
        "",
        "Each .run file is a complete AI model with everything it needs: no installation,",
        "no internet. It runs on 64-bit Linux (x86-64): lab PCs, Chromebooks with Linux",
        "turned on, and Windows through WSL.",
        "",
        "On this stick:",
    ]
    for b in models:
        m = b.manifest
        bits = [m.quant or "", format_size(sum(p.size for p in m.parts) + b.path.stat().st_size)]
        lic = _licence(m)
        lines.append(
            f"  - {m.name or b.path.name} ({', '.join(x for x in bits if x)}): {_files_of(b)}"
        )
        if lic:
            lines.append(f"    Licence: {lic}. `./{b.path.name} --license` shows the full text.")
    lines += [
        "",
        "How to run one",
        "--------------",
        "1. Copy the .run file (and its .partN files, if it has any: they must stay in the",
        "   same folder) to your home folder. The first start unpacks the model into your",
        "   cache folder (~/.cache/packer) and says how much space it takes.",
        "2. Open a terminal in that folder and make it executable:",
        "       chmod +x MODEL.run",
        "3. Chat in the terminal:        ./MODEL.run",
        "   Or in the browser:           ./MODEL.run --server",
        "   (then open http://127.0.0.1:8080). In a file manager, double-clicking the",
        "   file also opens the chat in the browser.",
        "4. To remove what it unpacked:  ./MODEL.run --uninstall",
        "",
        '"Permission denied" when started from the stick?',
        "Most Linux desktops mount USB sticks without permission to run programs",
        "(the `showexec` or `noexec` mount options). Copy the file to your home folder",
        "first (step 1), then chmod +x and run it there.",
        "",
        "Windows",
        "-------",
        "Use WSL (Windows Subsystem for Linux): in PowerShell, `wsl --install`, restart,",
        "open Ubuntu, copy the file from the stick (e.g. cp /mnt/d/MODEL.run ~/) and",
        "follow the steps above. With --server, open http://127.0.0.1:8080 in Windows.",
        "",
        "Check the files",
        "---------------",
        "    sha256sum -c SHA256SUMS      (every line must say OK)",
        "    ./MODEL.run --verify         (checks one model without running it)",
        "",
        "Licences",
        "--------",
        "Each model comes with its own licence, stored inside the file: read it with",
        "`./MODEL.run --license`. Some licences (Llama, Gemma) require that everyone",
        "who gets a copy also gets the licence: that command prints it.",
        "",
        "Made with packer. La versión en español está en LEEME.txt.",
    ]
    return "\n".join(lines) + "\n"


def readme_es(models: list[Bundle]) -> str:
    lines = [
        "Modelos de IA que funcionan sin conexión",
        "========================================",
        "",
        "Cada archivo .run es un modelo de IA completo con todo lo que necesita: no hay",
        "que instalar nada ni tener internet. Funciona en Linux de 64 bits (x86-64): los",
        "PC del aula, Chromebooks con Linux activado y Windows a través de WSL.",
        "",
        "En esta memoria USB:",
    ]
    for b in models:
        m = b.manifest
        bits = [m.quant or "", format_size(sum(p.size for p in m.parts) + b.path.stat().st_size)]
        lic = _licence(m)
        lines.append(
            f"  - {m.name or b.path.name} ({', '.join(x for x in bits if x)}): {_files_of(b)}"
        )
        if lic:
            lines.append(
                f"    Licencia: {lic}. `./{b.path.name} --license` muestra el texto completo."
            )
    lines += [
        "",
        "Cómo usarlo",
        "-----------",
        "1. Copia el archivo .run (y sus archivos .partN, si los tiene: deben estar en la",
        "   misma carpeta) a tu carpeta personal. La primera vez, el modelo se descomprime",
        "   en tu carpeta de caché (~/.cache/packer) y te dice cuánto espacio ocupa.",
        "2. Abre una terminal en esa carpeta y dale permiso de ejecución:",
        "       chmod +x MODELO.run",
        "3. Para conversar en la terminal:   ./MODELO.run",
        "   O en el navegador:                ./MODELO.run --server",
        "   (y abre http://127.0.0.1:8080). Desde el gestor de archivos, un doble clic",
        "   en el archivo también abre el chat en el navegador.",
        "4. Para borrar lo que descomprimió: ./MODELO.run --uninstall",
        "",
        '¿"Permiso denegado" al abrirlo desde la memoria USB?',
        "Casi todos los escritorios Linux montan las memorias USB sin permiso para",
        "ejecutar programas (las opciones `showexec` o `noexec`). Copia primero el",
        "archivo a tu carpeta personal (paso 1) y ejecútalo desde allí con chmod +x.",
        "",
        "Windows",
        "-------",
        "Usa WSL (el Subsistema de Windows para Linux): en PowerShell, `wsl --install`,",
        "reinicia, abre Ubuntu, copia el archivo desde la memoria USB (por ejemplo",
        "cp /mnt/d/MODELO.run ~/) y sigue los pasos de arriba. Con --server, abre",
        "http://127.0.0.1:8080 en el navegador de Windows.",
        "",
        "Comprobar los archivos",
        "----------------------",
        "    sha256sum -c SHA256SUMS      (cada línea debe decir OK, o «La suma coincide»)",
        "    ./MODELO.run --verify        (comprueba un modelo sin ejecutarlo)",
        "",
        "Licencias",
        "---------",
        "Cada modelo tiene su propia licencia, guardada dentro del archivo: léela con",
        "`./MODELO.run --license`. Algunas licencias (Llama, Gemma) exigen entregar una",
        "copia de la licencia a quien reciba el modelo: ese comando la muestra.",
        "",
        "Hecho con packer. The English version is in README.txt.",
    ]
    return "\n".join(lines) + "\n"
