"""The embedded default corpus: English prose that every Python installation carries.

Two sources, read without importing (so no module code runs):
- the documentation strings of the standard library's modules, classes and functions (one
  document per module file), parsed with `ast`;
- `pydoc_data/topics.py`, the language reference's topics that `help()` shows (one document per topic).

Written in WikiExtractor's layout (`<doc id=... title=...>`, a title line, one paragraph per line,
`</doc>`), so it goes through the same cleanup and sentence splitting as real Wikipedia text. The text
depends on the Python version; for one interpreter it is the same on every run.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bert_pretrain.atomic import atomic_path

# Folders of the standard library that hold tests, tools or GUI code rather than documented APIs.
_SKIPPED_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
_MIN_PARAGRAPH_WORDS = 8
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~*]{3,}\s*$)")


@dataclass(frozen=True)
class CorpusStats:
    documents: int
    paragraphs: int
    words: int


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a docstring: wrapped lines joined, code examples and rulers dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if not _CODE_LINE.match(line)]
        paragraph = " ".join(line for line in lines if line)
        if len(paragraph.split()) >= _MIN_PARAGRAPH_WORDS and not block.startswith((" ", "\t")):
            out.append(paragraph)
    return out


def _module_documents(stdlib: Path):
    """(title, paragraphs) per standard-library source file, in sorted path order."""
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _SKIPPED_PARTS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                paragraphs += _paragraphs(ast.get_docstring(node) or "")
        if paragraphs:
            yield ".".join(relative.with_suffix("").parts), paragraphs


def _topic_documents(stdlib: Path):
    """(title, paragraphs) per `help()` topic of pydoc_data/topics.py (a dict literal of strings)."""
    path = stdlib / "pydoc_data" / "topics.py"
    if not path.is_file():
        return
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    paragraphs = _paragraphs(value.value)
                    if paragraphs:
                        yield f"topic {key.value}", paragraphs
            return


def write_builtin_corpus(path: str | Path, stdlib: str | Path | None = None) -> CorpusStats:
    """Write the corpus to `path` (atomically) in WikiExtractor layout; return its size."""
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    documents = paragraphs = words = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for title, texts in (*_topic_documents(stdlib), *_module_documents(stdlib)):
            documents += 1
            paragraphs += len(texts)
            words += sum(len(t.split()) for t in texts)
            body = "\n".join(texts)
            out.write(f'<doc id="{documents}" url="python-stdlib:{title}" title="{title}">\n{title}\n\n{body}\n</doc>\n')
    return CorpusStats(documents=documents, paragraphs=paragraphs, words=words)
