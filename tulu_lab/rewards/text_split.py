"""Offline sentence, word and paragraph splitting for the instruction-following verifiers.

The official IFEval code counts sentences with NLTK's trained Punkt model and tokenises words
with NLTK (both need data downloads). These regex versions need nothing and follow the same rules
closely enough for verification:

- ``count_words``: runs of word characters (``\\w+``), exactly what IFEval's ``count_words`` does
  (NLTK ``RegexpTokenizer(r"\\w+")``), so "don't" is two words and "state-of-the-art" four.
- ``split_sentences``: a sentence ends at ``.``, ``!`` or ``?`` followed by whitespace, the end
  of the text, or an ASCII bracket, quote or "*" (Punkt's rule: "done.*" ends a sentence,
  "done.”" with a curly quote does not). Like Punkt, a line break alone does not end a
  sentence, and a period does not end one after a common abbreviation ("Dr.", "e.g.", "U.S."),
  a single-letter initial ("J. Smith"), inside a number ("3.14"), or when a lower-case word
  follows a number ("in 3. the"). As in Punkt, a list marker such as "2." before a capitalised
  word is a sentence of its own, so "1. Mix.\\n2. Bake." has four sentences; closing quotes and
  brackets after a sentence end stay with that sentence. Limits: Punkt learns abbreviations from
  data; words missing from ``ABBREVIATIONS`` split where Punkt might not.
- ``word_tokens``: words with inner hyphens kept whole ("COVID-19"), and English contractions
  split off as NLTK's Treebank tokenizer does ("DON'T" -> "DO", "N'T"; "LIFE'S" -> "LIFE", "'S"),
  as used for counting all-capital words.
"""

from __future__ import annotations

import re

from .time_bound import check_deadline

__all__ = [
    "ABBREVIATIONS",
    "count_sentences",
    "count_words",
    "split_paragraphs",
    "split_sentences",
    "word_tokens",
]

# Lower-case forms, without the final period. A period after these does not end a sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs e.g i.e cf approx dept fig inc ltd corp u.s u.k ph.d".split()
)
# Abbreviations that often close a sentence: they end one when a capitalised word follows.
_SENTENCE_FINAL_ABBREVIATIONS = frozenset({"etc", "a.m", "p.m"})

_WORD_RE = re.compile(r"\w+")
_WORD_TOKEN_RE = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")
_CONTRACTION_RE = re.compile(r"(?i)(n['’]t|['’](?:s|m|d|ll|re|ve))$")
# A run of terminal punctuation followed by whitespace, the end of the text, or one of the ASCII
# marks Punkt accepts there (so "end.*" and "end.)" close a sentence; a curly quote does not,
# again as in Punkt). The look-behind starts each match at the beginning of a run, keeping long
# runs linear.
_BOUNDARY_RE = re.compile(r"(?<![.!?])[.!?]+(?=\s|$|[)\";}\]*:@'({\[])")
# Closing quotes/brackets right after a sentence end belong to that sentence (Punkt's
# "realignment"), when whitespace or the end of the text follows them.
_CLOSERS_RE = re.compile(r"[\"')\]}]+(?=\s|$)")
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")
# Everything up to the last whitespace character of a span (its end is where the last word starts).
_LAST_SPACE_RE = re.compile(r".*\s", re.DOTALL)


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs in ``text`` (IFEval's definition of a word)."""
    return len(_WORD_RE.findall(text))


def word_tokens(text: str) -> list[str]:
    """Words made of letters/digits ("well-known" is one word, "don't" is "do" + "n't")."""
    tokens = []
    for count, word in enumerate(_WORD_TOKEN_RE.findall(text)):
        if count % 8192 == 8191:
            check_deadline()
        contraction = _CONTRACTION_RE.search(word)
        if contraction and contraction.start() > 0:
            tokens += [word[: contraction.start()], contraction.group(1)]
        else:
            tokens.append(word)
    return tokens


def _is_sentence_end(text: str, start: int, end: int, token_start: int | None) -> bool:
    """Decide whether the punctuation run text[start:end] closes a sentence.

    ``token_start`` is where the whitespace-delimited word ending at ``start`` begins, or None
    when that word already holds an earlier sentence-end mark: such a word ("x.(y") is never an
    abbreviation, an initial or a number, so only the general rules apply to it.
    """
    punctuation = text[start:end]
    if "!" in punctuation or "?" in punctuation:
        return True
    following = end
    while following < len(text) and text[following].isspace():
        following += 1
    next_char = text[following : following + 1]
    if token_start is not None:
        token = text[token_start:start].lstrip("\"'“‘([*_").lower()
        if token in ABBREVIATIONS:
            return False
        if token in _SENTENCE_FINAL_ABBREVIATIONS:
            return next_char.isupper()
        if len(punctuation) == 1 and len(token) == 1 and token.isalpha() and next_char.isupper():
            return False  # an initial, as in "J. R. R. Tolkien"
        if len(punctuation) == 1 and token.isdigit():
            # Like Punkt: "3." ends a sentence unless a lower-case word follows, so a list marker
            # "2. Next step" is a sentence of its own.
            return not next_char.islower()
    if len(punctuation) > 1 and next_char.islower():
        return False  # an ellipsis inside a sentence: "wait... and see"
    return True


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (see the module docstring for the rules).

    Linear in the length of the text: each word is read once (at its first candidate boundary),
    later boundaries inside the same word need nothing but their own neighbourhood.
    """
    sentences = []
    start = 0
    previous = -1  # start of the previous candidate boundary
    for count, match in enumerate(_BOUNDARY_RE.finditer(text)):
        if count % 2048 == 2047:
            check_deadline()
        # The word ending at this boundary starts after the last whitespace before it; searched
        # only back to the previous boundary, since a word spanning both is not a special token.
        space = _LAST_SPACE_RE.match(text, max(previous, 0), match.start())
        if space is not None:
            token_start: int | None = space.end()
        else:
            token_start = None if previous >= 0 else 0
        previous = match.start()
        if match.start() < start:
            continue  # inside closers already attached to the previous sentence
        if _is_sentence_end(text, match.start(), match.end(), token_start):
            closers = _CLOSERS_RE.match(text, match.end())
            end = closers.end() if closers else match.end()
            sentence = text[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def count_sentences(text: str) -> int:
    """Number of sentences in ``text``."""
    return len(split_sentences(text))


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines (lines holding only spaces count as blank), non-empty."""
    return [p.strip() for p in _BLANK_LINE_RE.split(text) if p.strip()]
