"""Wikipedia `pages-articles` XML dumps (.xml or .xml.bz2): streamed pages, then wikitext to plain text.

`iter_articles` streams the XML with defusedxml (a dump is untrusted input: any DOCTYPE, entity
declaration or external reference is refused before anything is expanded or fetched) and clears each
page once read, so memory stays constant whatever the dump's size. Redirects and pages outside the
article namespace (0) are dropped and counted.

`wikitext_to_paragraphs` removes the markup with mwparserfromhell, walking its node tree: templates,
comments, references, tables, math and other non-prose tags, file/category/interlanguage links and
bare URLs go; link and formatting text stays; section headings end a paragraph and are dropped, and
list lines are dropped whole (as in MLPerf's WikiExtractor text, which has no headings and no lists).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

import defusedxml.ElementTree as SafeElementTree
import mwparserfromhell
from defusedxml import DefusedXmlException
from mwparserfromhell.nodes import Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink

from bert_pretrain.errors import InputError
from bert_pretrain.prepare.markup_scan import cut_comments_and_refs, cut_tables, cut_templates, unclosed_openers
from bert_pretrain.prepare.text import Tally, clean_wiki_leftovers, open_binary, read_error

ARTICLE_NAMESPACE = "0"
# Tags whose content is not prose (tables included: wiki `{| |}` tables parse as <table>).
_DROPPED_TAGS = {"ref", "references", "table", "math", "chem", "ce", "score", "timeline", "graph", "gallery",
                 "imagemap", "syntaxhighlight", "source", "pre", "mapframe", "templatedata", "categorytree",
                 "inputbox", "section", "hiero"}
# Links that show no text in an article: files, categories (case-insensitive) and interlanguage links
# (a lower-case language code such as "fr" or "be-x-old", the colon right after it, no space: "[[fr:Paris]]",
# not "[[Ali: Fear ...]]").
# A link that starts with a colon ("[[:fr:Paris|...]]", "[[:Category:X|...]]") is an ordinary visible link.
_DROPPED_LINK_PREFIX = re.compile(r"^\s*(?i:file|image|media|category)\s*:|^\s*[a-z]{2,3}(-[a-z]+)*:(?!\s)")
# Interwiki prefixes whose links read as their target's name (WikiExtractor's accepted namespaces).
_SHOWN_INTERWIKI = re.compile(r"^\s*(w|wikt|wiktionary)\s*:\s*", re.IGNORECASE)
# List items (wiki `*`, `#`, `:`, `;` lines and HTML <li>/<dd>/<dt>) are dropped with their whole line,
# as MLPerf's WikiExtractor text (run without --lists) has them: see-also lists, bibliographies, links.
_LIST_TAGS = ("li", "dd", "dt")
_LIST_MARK = "\ue000"  # a private-use character opening a list line, removed with the line
_MAGIC_WORD = re.compile(r"__[A-Z]+__")  # __TOC__, __NOTOC__, ...
# Wikipedia refuses to save a page over 2,048 KB, so a longer one is not an article.
MAX_PAGE_CHARS = 2 << 20
# Real articles leave at most a few comments, tags, tables or links unclosed (3 in the 106 of the test dump);
# each one costs mwparserfromhell a rescan of the page, so a page with more is not parsed.
MAX_UNCLOSED_OPENERS = 10
_QUOTE_MARKUP = re.compile(r"'{2,}")  # bold/italic markers left unpaired
_SPACES = re.compile(r"[ \t]+")
# What the parser leaves when markup is malformed (a table with a stray quote, a link across lines).
_TABLE_LINE = re.compile(r"^\s*(\{\||\|\}|\||!)")
_OPEN_FILE_LINK = re.compile(r"\[\[\s*:?\s*(file|image|media|category)\s*:.*$", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def iter_articles(path: Path, tally: Tally) -> Iterator[str]:
    """The wikitext of each article page of the dump at `path`, in file order."""
    pages = 0
    try:
        with open_binary(path) as stream:
            events = SafeElementTree.iterparse(stream, events=("start", "end"), forbid_dtd=True,
                                               forbid_entities=True, forbid_external=True)
            _, root = next(events)
            if _local(root.tag) != "mediawiki":
                raise InputError(f"{path}: the XML root is <{_local(root.tag)}>, not <mediawiki>; "
                                 "pass a Wikipedia pages-articles dump")
            for event, element in events:
                if event != "end" or _local(element.tag) != "page":
                    continue
                pages += 1
                text = _article_text(element, path, tally)
                root.clear()  # constant memory: drop the page just read
                if text is not None:
                    yield text
    except DefusedXmlException as err:
        raise InputError(f"{path}: refused: the XML uses a DOCTYPE, entity or external reference ({err!r}); "
                         "a Wikipedia dump never does, so the file is not a dump or was tampered with") from None
    except ElementTree.ParseError as err:
        raise InputError(f"{path}: not well-formed XML ({err}); if the dump is truncated, download it again; if the "
                         "file is not a Wikipedia XML dump, leave --input_format at auto") from None
    except (EOFError, OSError) as err:
        raise read_error(path, err) from None
    if pages == 0:
        tally.add("dumps with no <page>", str(path))


def _article_text(page, path: Path, tally: Tally) -> str | None:
    fields = {_local(child.tag): child for child in page}
    title = fields["title"].text if "title" in fields else "?"
    namespace = fields["ns"].text if "ns" in fields else ARTICLE_NAMESPACE
    if namespace != ARTICLE_NAMESPACE:
        tally.add("pages outside the article namespace dropped", f"{path}: {title}")
        return None
    text = None
    if "revision" in fields:
        text = next((c.text for c in fields["revision"] if _local(c.tag) == "text"), None)
    if "redirect" in fields or (text or "").lstrip()[:9].upper() == "#REDIRECT":
        tally.add("redirect pages dropped", f"{path}: {title}")
        return None
    if not text:
        tally.add("article pages with no text dropped", f"{path}: {title}")
        return None
    if len(text) > MAX_PAGE_CHARS:
        tally.add(f"pages over {MAX_PAGE_CHARS:,} characters skipped", f"{path}: {title}")
        return None
    if unclosed_openers(text) > MAX_UNCLOSED_OPENERS:
        tally.add(f"pages with over {MAX_UNCLOSED_OPENERS} unclosed comments, tags, tables or links skipped",
                  f"{path}: {title}")
        return None
    return text


def wikitext_to_paragraphs(wikitext: str) -> str:
    """Plain text of an article, one paragraph per line."""
    # Comments, refs, templates and tables are cut before parsing, in one pass each: they are most of a
    # page's markup, and building mwparserfromhell's tree is the cost (this halves it).
    code = mwparserfromhell.parse(cut_tables(cut_templates(cut_comments_and_refs(wikitext))))
    lines = (line for line in _MAGIC_WORD.sub("", _render(code.nodes)).split("\n")
             if not _TABLE_LINE.match(line) and not line.startswith(_LIST_MARK))
    lines = (_OPEN_FILE_LINK.sub("", _QUOTE_MARKUP.sub("", line)) for line in lines)
    lines = (_SPACES.sub(" ", clean_wiki_leftovers(line)).strip() for line in lines)
    return "\n".join(line for line in lines if line)


def _render(nodes) -> str:
    return "".join(_render_node(node) for node in nodes)


def _render_node(node) -> str:
    if isinstance(node, Text):
        return node.value
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, Wikilink):
        title = str(node.title)
        if _DROPPED_LINK_PREFIX.match(title):
            return ""
        if node.text is not None:
            return _render(node.text.nodes)
        return _SHOWN_INTERWIKI.sub("", _render(node.title.nodes).strip().lstrip(":"))
    if isinstance(node, ExternalLink):
        return _render(node.title.nodes) if node.title is not None else ""
    if isinstance(node, Tag):
        tag = str(node.tag).strip().lower()
        if tag in _DROPPED_TAGS:
            return ""
        contents = _render(node.contents.nodes) if node.contents is not None else ""
        if tag in _LIST_TAGS:
            return "\n" + _LIST_MARK + contents
        if tag in ("br", "p"):
            return "\n" + contents
        return contents
    if isinstance(node, Heading):
        return "\n"
    if isinstance(node, (Template, Comment)):
        return ""
    return ""  # arguments ({{{x}}}) and anything else are markup, not prose
