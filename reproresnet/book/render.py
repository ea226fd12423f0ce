"""How the book shows a table: pandas' `Styler` writes the HTML of its pages,
`DataFrame.to_markdown` the README's table.

A table (`tables`, `plan`) is a DataFrame of values: numbers, tuples of them (the seeds' errors
of a mean ± std, note numbers), None where there is none, words (`NOT_RUN`) and names. Until
it is rendered nothing is text; what each value reads as, and where it comes from, the table
carries in its `attrs`:

- formats: {column: function(value) -> text}, or {(row, column): ...} for one cell; else `plain`
- records: {(row, column): names of the records the cell was computed from}: it links to the
  first one's page, or, in a column of `parts`, each part of its tuple to its own record
- quoted: columns quoted from the papers, the seed or the library, not computed from a run
- notes: footnotes, numbered in the `NOTES` column
- source ("records" unless said; "library", "problems"), run (the record a page's own table
  describes), status_words (link to their explanation): for the reader and the browser test.

Needs pandas' output formatting (jinja2 for `Styler`, tabulate for `to_markdown`), not torch.
"""

from __future__ import annotations

import itertools
import math
import statistics
import string
import unicodedata
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pandas as pd
from pandas.io.formats.style import Styler

from ..reference import reference

MISSING, NOT_RUN, NOT_MEASURED = "—", "not run", "not measured"
NO_VALUE = (MISSING, NOT_RUN, NOT_MEASURED)  # words a column of numbers may hold instead of one
NOTES = "notes"
# Columns of network and run names: a name never breaks inside (preact_resnet110, not preact_ resnet110).
NAME_COLUMNS = ("network", "name", "run")
# Where the record pages are (book/runs/<name>.html), from a page one folder deep (book/, notebooks/).
RECORD_PAGES = "../book/runs/"
# Where each status word of the tables ("stopped", "deadline", "checkpoint not kept", ...) is
# explained, relative to the record pages: the run index, book/runs.md.
STATUS_WORDS = "../runs.html#status-words"
ARCHITECTURES_PAGE = "notebooks/architectures.ipynb"  # the README's link from a network's title to its identifier

# pandas' HTML table with the book's id, header classes and scrolling container (table.tpl).
_Styler = Styler.from_custom_template(str(Path(__file__).parent), html_table="table.tpl", html_style="no_style.tpl")


# ---------------------------------------------------------------- a table of values

@dataclass(frozen=True)
class Cell:
    """A value of a table being built and what `table` files under its attrs: the records it
    was computed from, its own format, whether it reads in words, whether it names a network."""
    value: object
    records: tuple[str, ...] = ()
    format: Callable | None = None
    worded: bool = False
    network: bool = False


def cell(value, runs=(), format: Callable | None = None, worded: bool = False, network: bool = False) -> Cell:
    """`value` computed from `runs` (RunRecords, or benchmark records with a "name")."""
    names = tuple(run.name if hasattr(run, "name") else run["name"] for run in runs)
    return Cell(value, names, format, worded, network)


# The attrs that `table` files by cell, (row, column).
CELL_ATTRS = ("records", "formats", "worded", "networks")


def table(rows: list[dict], columns=None, formats: dict | None = None, index: list | None = None,
          **attrs) -> pd.DataFrame:
    """A DataFrame of the rows' values (Python objects: no cell becomes text), each `Cell`'s
    records, format and kind filed under attrs by (row, column); `formats` by column; `index`
    the rows' labels (default 0, 1, ...)."""
    values, filed = [], {"records": {}, "formats": dict(formats or {}), "worded": set(), "networks": set()}
    labels = list(range(len(rows))) if index is None else list(index)
    for label, row in zip(labels, rows):
        values.append({})
        for column, value in row.items():
            if isinstance(value, Cell):
                key = (label, column)
                if value.records:
                    filed["records"][key] = value.records
                if value.format:
                    filed["formats"][key] = value.format
                if value.worded:
                    filed["worded"].add(key)
                if value.network:
                    filed["networks"].add(key)
                value = value.value
            values[-1][column] = value
    frame = pd.DataFrame(values, columns=columns, index=None if index is None else labels, dtype=object)
    frame.attrs.update(filed, **attrs)
    return frame


def cell_of(table: pd.DataFrame, row, column) -> Cell:
    """Cell (`row`, `column`) of a table with what its attrs file for it: to build another table of it."""
    key, attrs = (row, column), table.attrs
    return Cell(table.at[row, column], tuple(attrs.get("records", {}).get(key, ())),
                attrs.get("formats", {}).get(key) or attrs.get("formats", {}).get(column),
                key in attrs.get("worded", ()), key in attrs.get("networks", ()))


# ---------------------------------------------------------------- values as text

def plain(value) -> str:
    """A value as the tables show it unless their `formats` say otherwise: an error in % to two
    decimals, a count with thousands separators, a tuple its parts joined, None as `MISSING`."""
    if _missing(value):
        return MISSING
    if isinstance(value, tuple):
        return ", ".join(map(plain, value))
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.2f}"


def mean_std(values) -> str:
    """"6.50 ± 0.71" (sample standard deviation) for several values, "6.50" for one."""
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def hours(seconds: float) -> str:
    """Seconds in hours to one decimal; two significant digits under one hour (0.066, not 0.1)."""
    value = seconds / 3600
    return f"{value:.1f}" if value >= 0.95 or value == 0 else f"{value:.2g}"


def one_decimal(value) -> str:
    return f"{value:.1f}"


def to_noise(value, relative: float | None) -> str:
    """`value` rounded to the digit its relative noise leaves meaningful: 1448.9 at ±3.7 % is
    "1,450", 0.0524 at ±3.7 % is "0.052"; one decimal when the noise is unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if not relative or not value:
        return f"{value:,.1f}"
    digits = -math.floor(math.log10(abs(value) * relative))
    return f"{round(value, digits):,.{max(digits, 0)}f}"


def title(network: str) -> str:
    """A network's title where a source names it (`reference.py`), else its identifier."""
    return (reference(network) or {}).get("title") or network


def _is_number(value) -> bool:
    if isinstance(value, tuple):
        return all(map(_is_number, value))
    return value is None or value in NO_VALUE or isinstance(value, (int, float)) and not isinstance(value, bool)


def number_columns(table: pd.DataFrame) -> set:
    """Columns whose cells are all numbers (or say there is none) read as numbers: the book
    right-aligns them. A cell `worded` (its number in words: "30.34 (epoch 5)") makes its column text."""
    worded = {column for _, column in table.attrs.get("worded", ())}
    return {column for column in table.columns if column not in worded and all(map(_is_number, table[column]))}


def _formatter(table: pd.DataFrame, row, column):
    """How cell (`row`, `column`) reads: its own format, else its column's, else `plain`; a word
    or None reads as itself or `MISSING` whatever the format."""
    formats = table.attrs.get("formats", {})
    format_ = formats.get((row, column)) or formats.get(column) or plain
    return lambda value: plain(value) if _missing(value) or isinstance(value, str) else format_(value)


def _missing(value) -> bool:
    return value is None or isinstance(value, float) and math.isnan(value)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The text of each cell, as a reader sees it (a network by its title)."""
    def text(row, column, value) -> str:
        return title(value) if _is_network(table, row, column, value) else _formatter(table, row, column)(value)
    return pd.DataFrame({column: [text(row, column, value) for row, value in table[column].items()]
                         for column in table.columns}, index=table.index)


def _is_network(table: pd.DataFrame, row, column, value) -> bool:
    return isinstance(value, str) and (column == "network" or (row, column) in table.attrs.get("networks", ()))


def links(table: pd.DataFrame, row, column) -> tuple[str, ...]:
    """The names of the records cell (`row`, `column`) was computed from."""
    return tuple(table.attrs.get("records", {}).get((row, column), ()))


def record_page(name: str, pages: str = RECORD_PAGES) -> str:
    """The URL of a record's page in the book, relative to a page that sees them at `pages`."""
    return f"{pages}{quote(name)}.html"


# ---------------------------------------------------------------- HTML, with pandas' Styler

def _record_link(text: str, names, pages: str) -> str:
    about = escape(f"record{'s' if len(names) > 1 else ''}: {', '.join(names)}")
    return f'<a class="record-link" href="{record_page(names[0], pages)}" title="{about}">{escape(text)}</a>'


def _wrappable(text: str, column, number: bool, header: bool = False) -> str:
    """Escaped `text` that may wrap after "_" (a setting's name; not in a number) and after "/"
    (a path; not in a phrase). A name of a network or a run never breaks."""
    text = escape(text)
    if column in NAME_COLUMNS:
        return text
    text = text.replace("_", "_<wbr>") if header or not number else text
    return text.replace("/", "/<wbr>") if " " not in text else text


def _cell_html(table: pd.DataFrame, row, column, number: bool, table_id: str, pages: str):
    """The function that writes cell (`row`, `column`) as HTML: linked to its records, a network by
    its title (its identifier on hover), note numbers linked to their notes."""
    format_, names = _formatter(table, row, column), links(table, row, column)
    if names and column in table.attrs.get("parts", ()):
        return lambda value: ", ".join(_record_link(format_((part,)), [name], pages)
                                       for part, name in zip(value, names))
    if names:
        return lambda value: _record_link(format_(value), names, pages)
    if column == "network" or (row, column) in table.attrs.get("networks", ()):
        return lambda value: (f'<span class="network" title="{escape(value)}">{escape(title(value))}</span>'
                              if isinstance(value, str) and title(value) != value else escape(plain(value)))
    if column == NOTES:
        return lambda value: ", ".join(f'<a class="note-ref" href="#{table_id}-note-{n}">{n}</a>'
                                       for n in value) if value else MISSING
    return lambda value: _wrappable(format_(value), column, number)


def html(table: pd.DataFrame, table_id: str, pages: str = RECORD_PAGES) -> str:
    """The table as HTML, rendered by pandas' Styler, with an id the book's checker looks for.

    Number columns carry the class `num` (right-aligned by `_static/tables.css`), cells of the
    `quoted` columns the class `quoted`; a cell with records links to their page at `pages`.
    The notes follow the table as a numbered list, each note number linking to its note.
    `source` and `run` become data attributes: the browser test holds every number of a
    "records" table to a link or one of these."""
    numbers = number_columns(table)
    frame = table.reset_index(drop=True)
    frame.attrs = {**table.attrs, **_positional(table)}
    styler = _Styler(frame, cell_ids=False).hide(axis="index")
    for row, column in itertools.product(frame.index, frame.columns):
        styler.format(_cell_html(frame, row, column, column in numbers, table_id, pages),
                      subset=pd.IndexSlice[[row], [column]])
    styler.format_index(lambda name: _wrappable(str(name), name, name in numbers, header=True), axis="columns")
    styler.set_td_classes(_td_classes(frame, numbers))
    run = f' data-run="{escape(table.attrs["run"])}"' if "run" in table.attrs else ""
    styler.set_table_attributes(f'class="report-table" data-source="{table.attrs.get("source", "records")}"{run}')
    rendered = styler.to_html(table_id=table_id, header_classes={
        f"col{position}": " num" if column in numbers else " text" for position, column in enumerate(frame.columns)})
    # no blank line: one would end the HTML block of a record's Markdown page
    body = "\n".join(line for line in rendered.splitlines() if line.strip())
    return body + _notes_html(table, table_id) + _status_words_html(table, pages)


def _td_classes(frame: pd.DataFrame, numbers: set) -> pd.DataFrame:
    """Each cell's classes: `num` or `text` by its column, and `quoted` in a quoted column."""
    quoted = set(frame.attrs.get("quoted", ()))
    return pd.DataFrame({column: [("num" if column in numbers else "text") + (" quoted" if column in quoted else "")]
                         * len(frame) for column in frame.columns}, index=frame.index)


def _notes_html(table: pd.DataFrame, table_id: str) -> str:
    notes = "".join(f'<li id="{table_id}-note-{n}">{escape(note)}</li>'
                    for n, note in enumerate(table.attrs.get("notes", []), 1))
    return f'<ol class="table-notes">{notes}</ol>' if notes else ""


def _status_words_html(table: pd.DataFrame, pages: str) -> str:
    if not table.attrs.get("status_words"):
        return ""
    return (f'<p class="table-notes status-words">What each status word (complete, stopped, deadline, resumable, '
            f'checkpoint not kept, ...) means: <a href="{pages}{STATUS_WORDS}">status words</a>.</p>')


def _positional(table: pd.DataFrame) -> dict:
    """The attrs keyed by cell, keyed by row position instead of row label (rows a caller left out, left out)."""
    position = {label: index for index, label in enumerate(table.index)}

    def keyed(cells):
        if isinstance(cells, dict):
            return {(position[key[0]], key[1]) if isinstance(key, tuple) else key: value
                    for key, value in cells.items() if not isinstance(key, tuple) or key[0] in position}
        return {(position[row], column) for row, column in cells if row in position}
    return {name: keyed(table.attrs[name]) for name in CELL_ATTRS if name in table.attrs}


# ---------------------------------------------------------------- Markdown, for the README

# Characters left as they are in Markdown text: inline (line breaks become spaces), and with "[",
# "]" and "<" escaped, none of them starts a link, role, directive, math, substitution, emphasis or tag.
_MARKDOWN_PLAIN = frozenset(string.ascii_letters + string.digits + " ,;./-()%")


def markdown_text(value) -> str:
    """`value` as literal text in a MyST Markdown line: '<', '>' and '&' as HTML entities (no tag
    or entity of a record's reaches a page), every other ASCII punctuation backslash-escaped
    (CommonMark allows it for each: no `{role}`, `[x](url)`, `$math$`, `{{ substitution }}`,
    fence or emphasis), line breaks and other control characters as spaces (a value never
    starts a block of its own)."""
    text = str(value)

    def char(index: int, c: str) -> str:
        if c in _MARKDOWN_PLAIN or c == "_" and _inside_word(text, index):  # a_b is never emphasis
            return c
        if c in "<>&":
            return escape(c)
        if c in string.punctuation:
            return "\\" + c
        return " " if unicodedata.category(c).startswith(("C", "Z")) else c
    return "".join(char(index, c) for index, c in enumerate(text))


def _inside_word(text: str, index: int) -> bool:
    return 0 < index < len(text) - 1 and text[index - 1].isalnum() and text[index + 1].isalnum()


def markdown(table: pd.DataFrame, link) -> str:
    """A pipe table for GitHub's Markdown (`to_markdown`): a cell with records links to
    `link(first record's name)`, a network shows its title, linked to the architectures page
    with its identifier as the link's title."""
    texts = shown(table)

    def cell(row, column) -> str:
        value, names = table.at[row, column], links(table, row, column)
        if column == "network" and title(value) != value:
            return f'[{title(value).replace("|", "/")}]({ARCHITECTURES_PAGE} "{value}")'  # the library's own words
        text = markdown_text(texts.at[row, column])  # "|" included
        return f"[{text}]({link(names[0])})" if names else text
    cells = pd.DataFrame({column: [cell(row, column) for row in table.index] for column in table.columns})
    return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
