"""The demo pack's training corpus: the Python 3.11 documentation, from Debian's python3.11-doc.

The Python documentation is English prose with code examples, licensed under the PSF License
Agreement (examples also under the Zero-Clause BSD licence), so the extracted text may be
redistributed with the pack. Debian ships the reStructuredText sources of the HTML docs under
`/usr/share/doc/python3.11/html/_sources/`; this module turns them into plain documents:

- one document per section (split further at paragraph boundaries past `MAX_DOC_CHARS`), with
  markup removed (roles, headings' adornments, index/target/comment blocks) but code kept;
- whitespace collapsed, so each document is one line of the corpus file (`corpus.txt.gz`), the
  format the pack's activation store is built from;
- written with a fixed gzip header (no name, mtime 0) so the same input gives the same bytes.

The pack commits the result (`assets/demo/corpus.txt.gz`); `regenerate` is the exact recipe that
rebuilds it from the Debian package, and `SOURCE` records the package version and checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

SOURCE = {
    "package": "python3.11-doc",
    "version": "3.11.2-6+deb12u9",
    "distribution": "Debian 12 (bookworm), main",
    "deb_sha256": "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
    "sources_dir": "usr/share/doc/python3.11/html/_sources",
    "licence": "PSF License Agreement (Python documentation); Zero-Clause BSD for code examples",
    "licence_file": "usr/share/doc/python3.11/html/_sources/license.rst.txt",
}
EXCLUDE = ("whatsnew/changelog.rst.txt",)  # a stub pointing at a NEWS file that is not shipped
MIN_DOC_CHARS = 200
MAX_DOC_CHARS = 4000
MIN_KEEP_CHARS = 64  # shorter leftovers are index pages and stubs

# Directives whose whole block (the line and its indented body) is markup, not text.
_DROP_BLOCK = {
    "index", "toctree", "highlight", "module", "currentmodule", "sectionauthor", "moduleauthor",
    "testsetup", "testcleanup", "include", "literalinclude", "image", "figure", "only",
    "tabularcolumns", "raw", "miscnews", "program", "audit-event", "availability", "default-role",
    "role", "contents", "impl-detail", "c:namespace", "c:namespace-push", "c:namespace-pop",
}
# Directives whose argument is text worth keeping (object signatures, option names).
_KEEP_ARG = re.compile(
    r"(function|method|class|attribute|data|exception|decorator|decoratormethod|classmethod|"
    r"staticmethod|coroutinefunction|coroutinemethod|awaitablefunction|awaitablemethod|"
    r"abstractmethod|cmdoption|option|envvar|opcode|pdbcommand|describe|object|"
    r"c:\w+|2to3fixer|rubric|topic|sidebar|productionlist)$"
)
_LABELS = {"note": "Note:", "warning": "Warning:", "seealso": "See also:",
           "deprecated": "Deprecated since version", "deprecated-removed": "Deprecated since version",
           "versionadded": "New in version", "versionchanged": "Changed in version"}

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_EXPLICIT = re.compile(r"^(\s*)\.\.(\s|$)")  # comment, target (.. _x:), substitution definition
_ADORNMENT = re.compile(r"^\s*([=\-~*^\"#+`'.:_])\1{2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*[+|]?[-=+]{3,}[-=+ |]*$")
_ROLE = re.compile(r":(?:[\w-]+:)*[\w-]+:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`__?")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])")


def _role_text(match: re.Match[str]) -> str:
    """What Sphinx shows for a role: `Title <target>` -> Title; `~a.b.c` -> c; `!x` -> x."""
    text = match.group(1)
    titled = re.match(r"^(.*?)\s*<[^>]*>$", text, flags=re.S)
    if titled and titled.group(1):
        return titled.group(1)
    if text.startswith("~"):
        return text[1:].rsplit(".", 1)[-1]
    return text.lstrip("!")


def inline_text(line: str) -> str:
    line = _ROLE.sub(_role_text, line)
    line = _LITERAL.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    line = _STRONG.sub(r"\1", line)
    line = _EMPHASIS.sub(r"\1", line)
    line = line.replace("|version|", "3.11").replace("|release|", "3.11.2")
    line = re.sub(r"(?<=\S)::(?=\s|$)", ":", line)  # "for example::" reads "for example:"
    return re.sub(r"(^|\s)::(?=\s|$)", r"\1", line).strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rst_to_sections(text: str) -> list[list[str]]:
    """Plain-text paragraphs of one reST file, grouped by section (a heading starts a section)."""
    lines = text.expandtabs(8).splitlines()
    sections: list[list[str]] = [[]]
    para: list[str] = []

    def flush() -> None:
        if para:
            joined = inline_text(" ".join(" ".join(para).split()))
            if joined:
                sections[-1].append(joined)
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _ADORNMENT.match(line) or _TABLE_RULE.match(line):
            i += 1
            continue
        if line.strip() and _ADORNMENT.match(nxt) and len(nxt.strip()) >= len(line.strip()) - 1:
            flush()  # a heading: start a new section with the heading as its first paragraph
            sections.append([])
            para.append(line.strip())
            flush()
            i += 2
            continue
        directive = _DIRECTIVE.match(line)
        if directive or _EXPLICIT.match(line):
            flush()
            base = _indent(line)
            name = directive.group(2) if directive else ""
            arg = directive.group(3).strip() if directive else ""
            drop_body = not directive or name in _DROP_BLOCK
            if directive and not drop_body:
                if name in _LABELS:
                    para.append(f"{_LABELS[name]} {arg}".strip() + ("." if arg else ""))
                    flush()
                elif _KEEP_ARG.match(name) and arg:
                    para.append(arg)
                    flush()
            i += 1
            # Continuation lines of the directive's argument and its options (":noindex:").
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > base:
                if drop_body or re.match(r"^\s*:[\w-]+:", lines[i]):
                    i += 1
                    continue
                if _KEEP_ARG.match(name):
                    para.append(lines[i].strip())
                    i += 1
                    continue
                break
            flush()
            if drop_body:
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                    i += 1
            continue
        if not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return [s for s in sections if s]


def sections_to_documents(sections: list[list[str]]) -> list[str]:
    """Sections -> documents of MIN_DOC_CHARS..MAX_DOC_CHARS (short sections join the next)."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for section in sections:
        for para in section:
            if current and size + len(para) > MAX_DOC_CHARS:
                docs.append(" ".join(current))
                current, size = [], 0
            current.append(para)
            size += len(para) + 1
        if size >= MIN_DOC_CHARS:
            docs.append(" ".join(current))
            current, size = [], 0
    if current:
        if docs and size < MIN_DOC_CHARS:
            docs[-1] = docs[-1] + " " + " ".join(current)
        else:
            docs.append(" ".join(current))
    return docs


def documents_from_sources(sources_dir: Path) -> list[str]:
    """Every document of the documentation, files in sorted path order."""
    docs: list[str] = []
    for path in sorted(Path(sources_dir).rglob("*.rst.txt")):
        rel = path.relative_to(sources_dir).as_posix()
        if rel in EXCLUDE:
            continue
        docs.extend(d for d in sections_to_documents(rst_to_sections(path.read_text(encoding="utf-8")))
                    if len(d) >= MIN_KEEP_CHARS)
    return docs


def write_corpus(docs: list[str], path: Path) -> str:
    """Write one document per line, gzip with a fixed header; returns the text's sha256."""
    text = "".join(" ".join(d.split()) + "\n" for d in docs).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(text).hexdigest()


def read_corpus(path: Path) -> list[str]:
    """Documents of a corpus file (.txt or .txt.gz), one a line, empty lines skipped."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [line for line in raw.decode("utf-8").splitlines() if line.strip()]


def corpus_sha256(path: Path) -> str:
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return hashlib.sha256(raw).hexdigest()


def _extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's data archive with `dpkg-deb -x` (or `ar` + tarfile where dpkg is absent)."""
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    else:
        subprocess.run(["ar", "x", str(deb.resolve())], cwd=dest, check=True)
        data = next(dest.glob("data.tar.*"))
        with tarfile.open(data) as tar:
            tar.extractall(dest, filter="data")
    return dest / SOURCE["sources_dir"]


def regenerate(out: Path, deb: Path | None = None) -> str:
    """The recipe: fetch python3.11-doc with `apt-get download`, check it, extract, write `out`.

    `deb` skips the download (a .deb of the recorded version you already have). Returns the sha256
    of the corpus text; the build records it in the manifest and SOURCES.md.
    """
    with tempfile.TemporaryDirectory(prefix="featurescope-corpus-") as tmp_name:
        tmp = Path(tmp_name)
        if deb is None:
            subprocess.run(["apt-get", "download", f"{SOURCE['package']}={SOURCE['version']}"],
                           cwd=tmp, check=True)
            deb = next(tmp.glob("*.deb"))
        digest = hashlib.sha256(Path(deb).read_bytes()).hexdigest()
        if digest != SOURCE["deb_sha256"]:
            raise ValueError(f"{deb} has sha256 {digest}; the recipe expects {SOURCE['deb_sha256']} "
                             f"({SOURCE['package']} {SOURCE['version']}).")
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        sources = _extract_deb(Path(deb), unpacked)
        return write_corpus(documents_from_sources(sources), out)
