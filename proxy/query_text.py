"""Extract the natural-language query text from an Elasticsearch/OpenSearch search.

The proxy reranks hits with a cross-encoder, which scores (query, document) pairs, so
it needs the plain text the user searched for, not the query DSL around it. This module
walks the already JSON-decoded ``"query"`` value of a search body and collects the
texts of the full-text clauses that express what the user is looking for (``match``
and its phrase/prefix variants, ``multi_match``, ``combined_fields``,
``query_string``/``simple_query_string`` with their Lucene syntax stripped, and
optionally ``term``/``terms`` on caller-designated text fields), descending through
the scoring parts of compound queries (``bool`` ``must``/``should``, ``dis_max``,
``boosting`` ``positive``, ``constant_score``, ``function_score``, ``nested``) but never
into clauses that only restrict the result set (``filter``, ``must_not``) or that are
about other documents (``has_child``/``has_parent``). Distinct texts are joined in
document order with whitespace normalised; anything unrecognised or malformed
contributes nothing, and no input makes these functions raise. It also handles the
URI-search ``q=`` parameter. Standard library only, so it is cheap to import and test.
"""

from __future__ import annotations

import re

__all__ = ["extract_query_text", "query_from_q_param", "strip_query_syntax"]

# Deeper nesting than this is ignored rather than risking a RecursionError.
# (Elasticsearch itself rejects bool queries nested deeper than 20 by default.)
_MAX_DEPTH = 100

# Clauses whose body is ``{field: text}`` or ``{field: {"query": text, ...}}``.
_MATCH_KINDS = frozenset({"match", "match_phrase", "match_phrase_prefix", "match_bool_prefix"})
# Clauses whose body is ``{"query": text, ...}`` with plain (analysed) text.
_PLAIN_QUERY_KINDS = frozenset({"multi_match", "combined_fields"})
# Clauses whose body is ``{"query": text, ...}`` in Lucene query-string syntax.
_SYNTAX_QUERY_KINDS = frozenset({"query_string", "simple_query_string"})
# Compound clauses: which keys of their body hold scoring sub-queries.
_COMPOUND_KEYS: dict[str, tuple[str, ...]] = {
    "bool": ("must", "should"),
    "dis_max": ("queries",),
    "boosting": ("positive",),
    "constant_score": ("filter",),
    "function_score": ("query",),
    "nested": ("query",),
}

# Escaped ASCII characters are parked in a private-use range while syntax is
# stripped, so ``\:`` or ``\(`` survive as literal text, then restored.
_ESCAPE_BASE = 0xF0000
_ESCAPE_RE = re.compile(r"\\(.?)", re.DOTALL)
_PARKED_RE = re.compile("[\U000f0000-\U000f007f]")
# Ranges: ``[a TO b]``, ``{a TO b}`` and mixed inclusive/exclusive bounds.
_RANGE_RE = re.compile(r"[\[{][^\[\]{}]*[\]}]")
# Regular expressions such as ``/joh?n/`` (a "/" opening a term): no natural text.
_REGEX_TERM_RE = re.compile(r"(?<![^\s(:+\-!])/[^/]*/")
# Characters that are pure syntax wherever they appear.
_SYNTAX_CHARS_RE = re.compile(r'[()"\[\]{}|]|&&')
# A field prefix at the start of a token: ``title:``, ``title.en:``, ``*:``.
_FIELD_PREFIX_RE = re.compile(r"^(?:[^\s:]*:)+")
# Fuzziness / proximity (``~``, ``~2``, ``~0.8``) and boosts (``^2``, ``^0.5``).
_SUFFIX_OP_RE = re.compile(r"[~^]\d*(?:\.\d+)?")
_WILDCARD_RE = re.compile(r"[*?]")
_PREFIX_OPS = "+-!"
_BOOLEAN_WORDS = frozenset({"AND", "OR", "NOT"})


def _park_escape(match: re.Match[str]) -> str:
    char = match.group(1)
    if char and ord(char) < 0x80:
        return chr(_ESCAPE_BASE + ord(char))
    return char  # a non-ASCII char needs no protection; a trailing "\" is dropped


def _unpark(match: re.Match[str]) -> str:
    return chr(ord(match.group(0)) - _ESCAPE_BASE)


def _clean_token(token: str) -> str:
    """Strip the Lucene syntax from one whitespace-delimited token."""
    if token in _BOOLEAN_WORDS:
        return ""
    token = token.lstrip(_PREFIX_OPS)
    prefix = _FIELD_PREFIX_RE.match(token)
    if prefix is not None:
        if prefix.group(0).startswith("_exists_:"):
            return ""  # ``_exists_:field`` is a filter, the field name is no text
        token = token[prefix.end() :]
        if token.startswith(("<", ">")):
            return ""  # one-sided range such as ``age:>=10``
        token = token.lstrip(_PREFIX_OPS)
    token = _SUFFIX_OP_RE.sub("", token)
    return _WILDCARD_RE.sub("", token)


def strip_query_syntax(text: str) -> str:
    """Reduce a Lucene / simple query string to its words.

    Removes field prefixes (``title:``), the boolean operators ``AND``/``OR``/``NOT``,
    ``&&``/``||`` and ``+``/``-``/``!``/``|`` prefixes, quotes, parentheses,
    fuzziness/proximity (``~N``), boosts (``^N``), the ``*``/``?`` wildcards,
    ranges (``[a TO b]``, ``{a TO b}``, ``field:>N``), ``/regex/`` terms and
    ``_exists_:field``; escaped characters are kept
    literally without their backslash. Words are joined by single spaces; the result
    may be empty.
    """
    parked = _ESCAPE_RE.sub(_park_escape, text)
    parked = _RANGE_RE.sub(" ", parked)
    parked = _REGEX_TERM_RE.sub(" ", parked)
    parked = _SYNTAX_CHARS_RE.sub(" ", parked)
    words = (_clean_token(token) for token in parked.split())
    joined = " ".join(word for word in words if word)
    return " ".join(_PARKED_RE.sub(_unpark, joined).split())


def query_from_q_param(q: str) -> str | None:
    """Return the query text of a URI search's ``q=`` parameter, or None if empty."""
    if not isinstance(q, str):
        return None
    return strip_query_syntax(q) or None


def _clauses(value: object) -> list[dict[str, object]]:
    """A clause slot holds one query object or a list of them; ignore anything else."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def _field_value(value: object, key: str) -> object:
    """``{field: value}`` bodies accept the bare value or ``{key: value, ...}``."""
    if isinstance(value, dict):
        return value.get(key)
    return value


class _Collector:
    def __init__(self, text_fields: frozenset[str] | None) -> None:
        self.text_fields = text_fields
        self.texts: list[str] = []

    def add(self, text: object, *, syntax: bool = False) -> None:
        if not isinstance(text, str):
            return
        if syntax:
            text = strip_query_syntax(text)
        normalised = " ".join(text.split())
        if normalised:
            self.texts.append(normalised)

    def visit(self, query: object, depth: int = 0) -> None:
        if depth > _MAX_DEPTH or not isinstance(query, dict):
            return
        for kind, body in query.items():
            if not isinstance(body, dict):
                continue
            if kind in _MATCH_KINDS:
                for value in body.values():
                    self.add(_field_value(value, "query"))
            elif kind in _PLAIN_QUERY_KINDS:
                self.add(body.get("query"))
            elif kind in _SYNTAX_QUERY_KINDS:
                self.add(body.get("query"), syntax=True)
            elif kind in ("term", "terms"):
                self._visit_terms(kind, body)
            elif kind in _COMPOUND_KEYS:
                slots = _COMPOUND_KEYS[kind]
                # Iterate the body (not the slot names) to keep document order.
                for key, value in body.items():
                    if key in slots:
                        for clause in _clauses(value):
                            self.visit(clause, depth + 1)

    def _visit_terms(self, kind: str, body: dict[str, object]) -> None:
        if self.text_fields is None:
            return
        for field, value in body.items():
            if field not in self.text_fields:
                continue
            if kind == "term":
                self.add(_field_value(value, "value"))
            elif isinstance(value, list):
                for item in value:
                    self.add(item)


def extract_query_text(query: object, *, text_fields: frozenset[str] | None = None) -> str | None:
    """Return the text a cross-encoder should score hits against, or None.

    ``query`` is the JSON-decoded value of a search body's ``"query"`` key.
    ``term``/``terms`` clauses count only on fields listed in ``text_fields`` (and
    never when it is None). Distinct texts are joined in document order by one space.
    Never raises; unsupported or malformed clauses simply contribute nothing.
    """
    collector = _Collector(text_fields)
    collector.visit(query)
    distinct = dict.fromkeys(collector.texts)  # ordered, exact-duplicate free
    return " ".join(distinct) or None
