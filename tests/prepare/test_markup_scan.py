"""Wiki markup cut in one pass: hand-written pages for each construct (expected text from the rules), and
crafted pages of unclosed openers that cost time linear in their size (a ratio against an ordinary page)."""

import bz2
import re
import time

import pytest
from support.wikidump_pages import HEADER, page

from bert_pretrain.prepare import wikidump
from bert_pretrain.prepare.markup_scan import (
    cut_comments_and_refs,
    cut_tables,
    cut_tags,
    cut_templates,
    unclosed_openers,
)
from bert_pretrain.prepare.text import Tally, clean_wiki_leftovers
from bert_pretrain.prepare.wikidump import iter_articles, wikitext_to_paragraphs


@pytest.mark.parametrize(("text", "expected"), [
    ('a<ref name="x">cited</ref>b', "ab"),
    ("a<ref name=x/>b<REF name = y />c", "abc"),  # self-closing, any case
    ("a<ref>b<ref>c</ref>d</ref>e", "ad</ref>e"),  # a ref ends at the first </ref> after it: no nesting
    ("a<!-- b <ref>c</ref> -->d", "ad"),  # the comment starts first and swallows the ref
    ("a<ref>b<!-- c </ref> -->d", "a -->d"),  # the ref starts first and ends at its closer
    ("a<!-- one -->b<!-- two -->c", "abc"),
    ("a<ref>never closed", "a<ref>never closed"),
    ("a<!-- never closed <ref/>", "a<!-- never closed "),  # the unclosed comment stays; the ref after it goes
    ("a<references/>b", "a<references/>b"),  # not a ref: <ref must end the tag's name
    ("a<ref name=x>b</ref >c", "ac"),  # the dump's closer may have spaces before '>'
])
def test_comments_and_refs(text, expected):
    assert cut_comments_and_refs(text) == expected


def test_leftover_refs_need_an_exact_closer():
    assert cut_comments_and_refs("a<ref>b</ref >c", ref_end="</ref>", comments=False) == "a<ref>b</ref >c"
    assert cut_comments_and_refs("a<!--b-->c<ref>d</ref>", ref_end="</ref>", comments=False) == "a<!--b-->c"


@pytest.mark.parametrize(("text", "expected"), [
    ("a{{b}}c", "ac"),
    ("a{{b|{{c|{{d}}}}|e}}f", "af"),  # nested, cut innermost first
    ("a{{b", "a{{b"),  # unclosed
    ("a{b{{c}}}d", "a{b}d"),  # a single brace is no template
    ("{{{x}}}", "{}"),  # an argument: its inner {{x}} is cut
    ("a{{b}{{c}}}e", "ae"),  # cutting {{c}} joins "}" and "}" into the outer closer
    ("a{{b}c{{d}}}e", "a{{b}c}e"),  # "}c}" is no closer
    ("}}{{", "}}{{"),
])
def test_templates(text, expected):
    assert cut_templates(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("x\n{|\n| a\n|}\ny", "x\n\ny"),
    ("x\n{|\n| a\n{|\n| b\n|}\n|}\ny", "x\n\ny"),  # nested
    ("x\n{|\n| a\n|}|}\ny", "x\n|}\ny"),  # after the cut, the rest of its line starts a line
    ("x {| a |}\ny", "x {| a |}\ny"),  # not at the start of a line: no table
    ("{|\nnever closed\n", "{|\nnever closed\n"),
    ("|}\n{|\na\n", "|}\n{|\na\n"),  # a closer before its opener closes nothing
])
def test_tables(text, expected):
    assert cut_tables(text) == expected


def test_tags_end_at_the_next_gt():
    span = re.compile(r"</?span\b")
    assert cut_tags('a<span class="x">b</span>c<spanner>', span) == "abc<spanner>"
    assert cut_tags("a<span b<span c", span) == "a<span b<span c"  # no '>' after: nothing cut


def test_unclosed_openers_are_counted():
    assert unclosed_openers("a<ref>b</ref> <br> [http://x y] {{t}}\n{|\n|}\n<!-- c -->") == 0
    assert unclosed_openers("a<ref>b <span c\n{|\n[http://x y\n<!-- d") == 5


# The page, its kin for the other openers, and markup that the old cleanup cut once per nesting level.
CRAFTED = {
    "ref": "<ref name=a>x ",
    "comment": "<!--x ",
    "table": "{|x\n",
    "template": "{{x ",
    "link": "[http://a x ",
    "tag": "<span>x ",
}
ORDINARY = ("The '''albedo''' of a [[surface]] is the fraction of light it reflects.<ref>Cited.</ref> "
            "{{convert|1|km}} away, [[Earth|our planet]] reflects about 30%.\n\n")


def _fastest(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


SIZE = 60_000  # characters of each page: the old cleanup took 60 times an ordinary page's time at this size


@pytest.fixture(scope="module")
def ordinary_seconds(tmp_path_factory) -> float:
    return _dump_cleanup_seconds(tmp_path_factory.mktemp("ordinary") / "d.xml.bz2",
                                 ORDINARY * (SIZE // len(ORDINARY)))[0]


def _dump_cleanup_seconds(path, text: str) -> tuple[float, Tally]:
    path.write_bytes(bz2.compress((HEADER + page("P", text) + "</mediawiki>").encode()))
    tally = Tally()
    seconds = _fastest(lambda: [wikitext_to_paragraphs(a) for a in iter_articles(path, tally)])
    return seconds, tally


@pytest.mark.parametrize("kind", [*CRAFTED, "nested templates", "nested tables"])
def test_crafted_dump_pages_cost_as_much_as_ordinary_ones(tmp_path, ordinary_seconds, kind):
    size = SIZE
    if kind == "nested templates":
        crafted = "{{" * (size // 4) + "}}" * (size // 4)
    elif kind == "nested tables":
        crafted = "{|\n" * (size // 6) + "|}\n" * (size // 6)
    else:
        crafted = CRAFTED[kind] * (size // len(CRAFTED[kind]))
    crafted_seconds, tally = _dump_cleanup_seconds(tmp_path / "crafted.xml.bz2", crafted)
    assert crafted_seconds / ordinary_seconds < 20, (crafted_seconds, ordinary_seconds)
    if kind in CRAFTED and kind != "template":  # an unclosed {{ costs the parser nothing: it is kept
        reason = f"pages with over {wikidump.MAX_UNCLOSED_OPENERS} unclosed comments, tags, tables or links skipped"
        assert tally.counts == {reason: 3} and tally.examples[reason].endswith(": P")


@pytest.mark.parametrize(("opener", "left"), [("<ref name=a>x ", "x "), ("<span x ", "<span x "), ("<ref x ", "<ref x ")])
def test_crafted_wikiextractor_lines_cost_as_much_as_ordinary_ones(opener, left):
    size = 200_000
    crafted = opener * (size // len(opener))
    ordinary = "Some [[linked|words]] of [[prose]], and more words. " * (size // 52)
    ratio = _fastest(lambda: clean_wiki_leftovers(crafted)) / _fastest(lambda: clean_wiki_leftovers(ordinary))
    assert ratio < 20, ratio
    # no ref is closed; a leftover tag goes when its '>' comes
    assert clean_wiki_leftovers(crafted) == left * (size // len(opener))


def test_pages_over_the_size_limit_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(wikidump, "MAX_PAGE_CHARS", 1000)
    path = tmp_path / "dump.xml"
    path.write_text(HEADER + page("Small", "Short text.") + page("Big", "Words. " * 200) + "</mediawiki>")
    tally = Tally()
    assert list(iter_articles(path, tally)) == ["Short text."]
    assert tally.counts == {"pages over 1,000 characters skipped": 1}
    assert tally.examples["pages over 1,000 characters skipped"].endswith(": Big")
