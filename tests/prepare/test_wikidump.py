"""Wikipedia XML dumps: the real (shortened) enwiki dump, markup removal, and hostile or broken XML."""

import bz2
import time
import tracemalloc

import pytest
from support.wikidump_pages import HEADER, page

from bert_pretrain.errors import InputError
from bert_pretrain.prepare.text import Tally
from bert_pretrain.prepare.wikidump import iter_articles, wikitext_to_paragraphs


def test_real_dump_articles(shared_data):
    dump = next((shared_data / "wikidump").glob("*.bz2"))
    tally = Tally()
    articles = list(iter_articles(dump, tally))
    # 206 pages: 205 in namespace 0 of which 99 redirects, and one redirect in namespace 4 (as WikiExtractor: 106)
    assert len(articles) == 106
    assert tally.counts == {"redirect pages dropped": 99, "pages outside the article namespace dropped": 1}
    text = [wikitext_to_paragraphs(a) for a in articles[:20]]
    assert text[0].startswith("Anarchism is a political philosophy that advocates self-governed societies based on "
                              "voluntary institutions. These are often described as stateless societies, although")
    for markup in ("{{", "}}", "[[", "<ref", "thumb|", "{|", "&nbsp;", "<!--", "http"):
        assert not any(markup in t for t in text), markup
    assert all(len(t) > 500 for t in text)
    # List lines go, as in MLPerf's WikiExtractor text: e.g. Anarchism's bibliography and interlanguage links
    everything = "\n".join(wikitext_to_paragraphs(a) for a in articles)
    assert "Nettlau, Max" not in everything and "be-x-old:" not in everything


def test_markup_removal():
    wikitext = """{{Infobox|name=x}}'''Bold''' and ''italic'' [[Link target|shown text]] and [[Plain]].<ref name="a">Cited.</ref>
[[File:Pic.jpg|thumb|A caption]]
== Heading ==
Prose with [http://example.com an external link] and http://bare.example.com &amp; &eacute;.
* A see-also item, [[Plain]]
# A numbered item
: an indented line
; a term : its definition
<ul><li>an HTML list item</li></ul>
__TOC__[[Ali: Fear Eats the Soul]] is a film; [[:fr:Paris|the French capital]], [[wikt:anarchy]].
{| class="wikitable"
|-
| cell || cell
|}
<math>x^2</math>Text after math.<!-- a comment -->
[[Category:Things]] [[de:Ding]]"""
    assert wikitext_to_paragraphs(wikitext) == (
        "Bold and italic shown text and Plain.\nProse with an external link and & é.\n"
        "Ali: Fear Eats the Soul is a film; the French capital, anarchy.\nText after math.")


def test_billion_laughs_is_refused_without_expanding(tmp_path):
    entities = "".join(f'<!ENTITY l{i} "{"&l%d;" % (i - 1) * 10}">' for i in range(1, 10))
    bomb = f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY l0 "lol">{entities}]>{HEADER}{page("&l9;", "x")}</mediawiki>'
    path = tmp_path / "bomb.xml"
    path.write_text(bomb)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.xml: refused: the XML uses a DOCTYPE, entity"):
        list(iter_articles(path, Tally()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 1 and peak < 5e6  # 10^9 'lol's were never made


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE m [<!ENTITY secret SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE m SYSTEM "http://example.com/evil.dtd">',
])
def test_external_entities_are_refused(tmp_path, doctype):
    path = tmp_path / "evil.xml"
    path.write_text(f'<?xml version="1.0"?>{doctype}{HEADER}{page("&secret;", "x")}</mediawiki>')
    with pytest.raises(InputError, match=r"evil\.xml: refused"):
        list(iter_articles(path, Tally()))


def test_truncated_and_broken_dumps_name_the_file(tmp_path):
    xml = HEADER + "".join(page(f"P{i}", "Some text. " * 200) for i in range(200)) + "</mediawiki>"
    data = bz2.compress(xml.encode())
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.xml\.bz2: the compressed file ends early"):
        list(iter_articles(cut, Tally()))
    unfinished = tmp_path / "unfinished.xml"
    unfinished.write_text(xml[: len(xml) // 2])
    with pytest.raises(InputError, match=r"unfinished\.xml: not well-formed XML"):
        list(iter_articles(unfinished, Tally()))
    other = tmp_path / "other.xml"
    other.write_text("<html><body>hi</body></html>")
    with pytest.raises(InputError, match=r"other\.xml: the XML root is <html>"):
        list(iter_articles(other, Tally()))


def test_pages_are_filtered_and_memory_stays_flat(tmp_path):
    def peak_while_reading(pages: int) -> tuple[int, int]:
        path = tmp_path / f"dump{pages}.xml.bz2"
        body = "".join(page(f"A{i}", "Words in an article. " * 100) + page(f"R{i}", "#REDIRECT [[A]]", redirect=True)
                       + page(f"T{i}", "talk", ns=1) for i in range(pages))
        path.write_bytes(bz2.compress((HEADER + body + "</mediawiki>").encode()))
        tally = Tally()
        tracemalloc.start()
        count = sum(1 for _ in iter_articles(path, tally))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert tally.counts == {"redirect pages dropped": pages, "pages outside the article namespace dropped": pages}
        return count, peak

    small, large = peak_while_reading(100), peak_while_reading(1500)
    assert small[0] == 100 and large[0] == 1500
    assert large[1] < 2 * small[1] + 200_000  # 15x the pages, about the same peak
