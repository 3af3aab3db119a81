"""Wiki markup cut out in one pass over the text: each closer is searched for once, never once per opener.

A lazy regex such as `<ref>.*?</ref>` rescans to the end of the text for every opener that has no
closer, so a page of 32,000 unclosed `<ref>`s costs 32,000 scans of the page; a cut-innermost-then-
repeat loop costs one pass per nesting level. The functions here give the same result as those
regexes (the same leftmost, non-overlapping matches, innermost pairs first) in time linear in the text:
`_Next` remembers where the next closer is, and nesting is matched with a stack.
"""

from __future__ import annotations

import re


class _Next:
    """The first match of `pattern` at or after a position; a remembered answer serves every later
    position up to it, so positions that only grow cost one scan of the text in all."""

    def __init__(self, pattern: re.Pattern, text: str):
        self.pattern, self.text = pattern, text
        self.searched_from = len(text) + 1  # nothing searched yet
        self.found: re.Match | None = None  # the first match at or after searched_from; None: there is none

    def at_or_after(self, position: int) -> re.Match | None:
        if position < self.searched_from or (self.found is not None and self.found.start() < position):
            self.found = self.pattern.search(self.text, position)
            self.searched_from = position
        return self.found


_COMMENT_OR_REF = re.compile(r"<!--|<ref\b", re.IGNORECASE)
_REF = re.compile(r"<ref\b", re.IGNORECASE)
_COMMENT_END = re.compile(r"-->")
_GT = re.compile(r">")
_GT_OR_SLASH = re.compile(r"[>/]")
_BRACE = re.compile(r"[{}]")


def cut_comments_and_refs(text: str, ref_end: str = r"</ref\s*>", comments: bool = True) -> str:
    """`text` less `<!-- ... -->` comments (unless `comments` is False), `<ref ...>...</ref>` pairs and
    self-closing `<ref .../>`s, as `re.sub(r"<!--.*?-->|<ref\\b[^>/]*>.*?" + ref_end + r"|<ref\\b[^>]*/>",
    "", text)` (ignoring case, `.` matching newlines) gives it. An opener without its closer stays."""
    closers = {"comment": _Next(_COMMENT_END, text), "gt": _Next(_GT, text),
               "gt_or_slash": _Next(_GT_OR_SLASH, text), "ref": _Next(re.compile(ref_end, re.IGNORECASE), text)}
    openers = _COMMENT_OR_REF if comments else _REF
    pieces, kept_from, position = [], 0, 0
    while (opener := openers.search(text, position)) is not None:
        end = _match_end(opener, closers)
        if end is None:
            position = opener.start() + 1
            continue
        pieces.append(text[kept_from:opener.start()])
        kept_from = position = end
    pieces.append(text[kept_from:])
    return "".join(pieces)


def _match_end(opener: re.Match, closers: dict) -> int | None:
    """Where the comment or ref that `opener` starts ends, or None when it is not closed."""
    after = opener.end()
    if opener.group().startswith("<!--"):
        end = closers["comment"].at_or_after(after)
        return end.end() if end is not None else None
    # <ref attributes>...</ref>: the attributes hold no '>' or '/'
    stop = closers["gt_or_slash"].at_or_after(after)
    if stop is not None and stop.group() == ">":
        end = closers["ref"].at_or_after(stop.end())
        if end is not None:
            return end.end()
    # <ref attributes/>: the first '>' after the name, with '/' just before it
    gt = closers["gt"].at_or_after(after)
    if gt is not None and gt.start() > after and opener.string[gt.start() - 1] == "/":
        return gt.end()
    return None


def cut_tags(text: str, opener: re.Pattern) -> str:
    """`text` less every match of `opener` together with what follows it up to the next '>', as
    `re.sub(opener.pattern + "[^>]*>", "", text)` gives it; an opener with no '>' after it stays."""
    gt = _Next(_GT, text)
    pieces, kept_from, position = [], 0, 0
    while (start := opener.search(text, position)) is not None:
        end = gt.at_or_after(start.end())
        if end is None:
            break  # no '>' after this opener, so none after any later one
        pieces.append(text[kept_from:start.start()])
        kept_from = position = end.end()
    pieces.append(text[kept_from:])
    return "".join(pieces)


def cut_templates(text: str) -> str:
    """`text` less `{{...}}` templates, nested ones included: what cutting `{{x}}` with no brace in x,
    repeated until none is left, gives. A single brace blocks a pair; unclosed `{{` stays."""
    out: list[str] = []  # each brace its own item, the text between braces in items of its own
    braces: list[int] = []  # positions in `out` of the braces it holds, in order
    position = 0
    while (brace := _BRACE.search(text, position)) is not None:
        if brace.start() > position:
            out.append(text[position:brace.start()])
        position = brace.end()
        braces.append(len(out))
        out.append(brace.group())
        # out ends "{{" + brace-free text + "}}": an innermost template, cut. Its "}}" may be a "}" left
        # earlier and one after a template cut between them, so this is checked after every "}".
        if (brace.group() == "}" and len(braces) >= 4 and braces[-2] == braces[-1] - 1 and out[braces[-2]] == "}"
                and braces[-4] == braces[-3] - 1 and out[braces[-3]] == "{" and out[braces[-4]] == "{"):
            del out[braces[-4]:]
            del braces[-4:]
    out.append(text[position:])
    return "".join(out)


_TABLE_OPEN, _TABLE_CLOSE = "{|", "|}"


def cut_tables(text: str) -> str:
    """`text` less `{| ... |}` tables, nested ones included: an opener and a closer each at the start of
    a line, innermost first, as repeating `re.sub(r"^\\{\\|(?:(?!^\\{\\|)[\\s\\S])*?^\\|\\}", "", text,
    flags=re.M)` until nothing changes gives it. Unclosed `{|` stays."""
    out: list[str] = []
    openers: list[int] = []  # positions in `out` of the unmatched openers
    position, size = 0, len(text)
    while position < size:
        at_line_start = not out or out[-1].endswith("\n")
        if at_line_start and openers and text.startswith(_TABLE_CLOSE, position):
            del out[openers.pop():]
            position += 2
            continue
        if at_line_start and text.startswith(_TABLE_OPEN, position):
            openers.append(len(out))
            out.append(_TABLE_OPEN)
            position += 2
            continue
        line_end = _next_line_start(text, position)
        out.append(text[position:line_end])  # the rest of the line holds no opener or closer at a line start
        position = line_end
    return "".join(out)


def _next_line_start(text: str, position: int) -> int:
    newline = text.find("\n", position)
    return len(text) if newline < 0 else newline + 1


# Openers the wikitext parser tries to close and, finding no closer, retries from the next character:
# its work grows with (such openers) x (page size), so a page with many of them is not parsed.
_TAG_START = re.compile(r"<(/?)([A-Za-z][\w-]*)([^<>]*)(>?)")
_SINGLE_TAGS = {"br", "wbr", "hr", "meta", "link", "img", "li", "dt", "dd", "th", "td", "tr", "p"}
_TABLE_START = re.compile(r"^\{\|", re.MULTILINE)
_TABLE_END = re.compile(r"^\|\}", re.MULTILINE)
_BRACKETED_URL = re.compile(r"\[(?:https?:|ftp:|//)[^\[\]\n]*(\]?)", re.IGNORECASE)  # each '[' counts


def unclosed_openers(text: str) -> int:
    """How many comments, tags, tables and bracketed links of `text` are opened and never closed (a tag
    whose '>' never comes, or whose closing tag never comes; a table with no `|}` line after it; a
    `[http...` with no ']' on its line)."""
    last_comment_end = text.rfind("-->")
    count = text.count("<!--", last_comment_end + 3 if last_comment_end >= 0 else 0)
    tags = list(_TAG_START.finditer(text))
    last_close = {m.group(2).lower(): m.start() for m in tags if m.group(1)}
    for tag in tags:
        name = tag.group(2).lower()
        if not tag.group(4):
            count += 1  # no '>' before the next '<'
        elif (not tag.group(1) and name not in _SINGLE_TAGS and not tag.group(3).endswith("/")
              and last_close.get(name, -1) < tag.start()):
            count += 1  # never closed
    last_table_end = max((m.start() for m in _TABLE_END.finditer(text)), default=-1)
    count += sum(1 for m in _TABLE_START.finditer(text) if m.start() > last_table_end)
    count += sum(1 for m in _BRACKETED_URL.finditer(text) if not m.group(1))
    return count
