"""Wikipedia XML dump pages written by hand, for the dump reader's tests."""

HEADER = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'


def page(title: str, text: str, ns: int = 0, redirect: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>" + ('<redirect title="X" />' if redirect else "")
            + f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>\n')
