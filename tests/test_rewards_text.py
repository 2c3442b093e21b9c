"""Offline sentence/word/paragraph splitting and language detection used by the IFEval verifiers."""

import sys
import warnings

import pytest

from tulu_lab.rewards import language
from tulu_lab.rewards.language import detect_language, detect_language_offline
from tulu_lab.rewards.text_split import count_sentences, count_words, split_paragraphs, split_sentences, word_tokens


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello world. This is Dr. Smith! Is it? Yes.", ["Hello world.", "This is Dr. Smith!", "Is it?", "Yes."]),
        ("J. R. R. Tolkien wrote it. Then he died.", ["J. R. R. Tolkien wrote it.", "Then he died."]),
        ("It costs 3.14 dollars. Wow", ["It costs 3.14 dollars.", "Wow"]),
        ('"Stop." He said.', ['"Stop."', "He said."]),  # closing quotes stay with their sentence
        ("*One.*\n\n*Two.*", ["*One.", "*\n\n*Two.", "*"]),  # like Punkt: ".*" ends a sentence
        ("He said “stop.” Then left.", ["He said “stop.” Then left."]),  # curly quote: no boundary
        ("Wait... and see. Done", ["Wait... and see.", "Done"]),
        ("We met at 5 p.m. Then left.", ["We met at 5 p.m.", "Then left."]),
        ("Line one\nline two.", ["Line one\nline two."]),  # a line break alone is not a boundary
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_numbered_list_markers_count_as_sentences_like_punkt():
    assert count_sentences("1. Mix it.\n2. Bake it.") == 4  # "1." "Mix it." "2." "Bake it."
    assert count_sentences("We saw 3. the rest left.") == 1  # lower case after the number


def test_count_words_is_ifevals_backslash_w_rule():
    assert count_words("don't stop state-of-the-art, 3.5") == 9
    assert count_words("") == 0


def test_word_tokens_split_contractions_like_treebank():
    assert word_tokens("DON'T stop LIFE'S well-known COVID-19") == ["DO", "N'T", "stop", "LIFE", "'S", "well-known", "COVID-19"]


def test_split_paragraphs_ignores_empty_ones():
    assert split_paragraphs("\n\nOne\n \nTwo\n\n\n\nThree\n") == ["One", "Two", "Three"]


def test_splitting_is_linear_on_hostile_input():
    import time

    started = time.monotonic()
    split_sentences("." * 200_000 + "x")
    split_sentences("a. " * 100_000)
    split_sentences("!" * 100_000)
    assert time.monotonic() - started < 5


SAMPLES = {
    "en": "This is a simple English sentence and it is fine.",
    "de": "Das ist ein deutscher Satz und er ist nicht schlecht.",
    "pt": "Esta é uma frase em português e não é ruim.",
    "it": "Questa è una frase italiana e non è male per il momento.",
    "fi": "Tämä on suomalainen lause ja se on hyvä, mutta ei pitkä.",
    "sw": "Hii ni sentensi ya Kiswahili na ni nzuri sana.",
    "vi": "Đây là một câu tiếng Việt và nó rất tốt.",
    "hi": "यह एक हिंदी वाक्य है और यह ठीक है।",
    "mr": "हे एक मराठी वाक्य आहे आणि ते चांगले आहे.",
    "ne": "यो नेपाली वाक्य हो र यो राम्रो छ।",
    "ar": "هذه جملة عربية وهي جيدة جدا.",
    "fa": "این یک جمله فارسی است که خوب است.",
    "ur": "یہ ایک اردو جملہ ہے اور یہ اچھا ہے۔",
    "ru": "Это русское предложение, и оно хорошее.",
    "uk": "Це українське речення, і воно гарне.",
    "bg": "Това е българско изречение и то е хубаво, съм.",
    "ko": "이것은 한국어 문장입니다.",
    "ja": "これは日本語の文です。",
    "th": "นี่คือประโยคภาษาไทย",
    "ta": "இது ஒரு தமிழ் வாக்கியம்.",
    "bn": "এটি একটি বাংলা বাক্য।",
    "gu": "આ એક ગુજરાતી વાક્ય છે.",
    "kn": "ಇದು ಕನ್ನಡ ವಾಕ್ಯ.",
    "te": "ఇది తెలుగు వాక్యం.",
    "pa": "ਇਹ ਪੰਜਾਬੀ ਵਾਕ ਹੈ।",
}


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_offline_detector(code):
    assert detect_language_offline(SAMPLES[code]) == code


def test_offline_detector_gives_none_without_evidence():
    assert detect_language_offline("12345 !!!") is None
    assert detect_language_offline("") is None
    assert detect_language_offline("Xyzzy") is None


def test_offline_detector_reads_english_capitals():
    assert detect_language_offline("THIS IS AN ENGLISH SENTENCE IN CAPITALS.") == "en"


def test_detect_language_uses_langdetect_or_falls_back():
    assert detect_language(SAMPLES["de"]) == "de"
    assert detect_language("") is None


def test_missing_langdetect_falls_back_to_the_offline_detector(monkeypatch):
    monkeypatch.setitem(sys.modules, "langdetect", None)  # makes "import langdetect" fail
    monkeypatch.setattr(language, "_fallback_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert language.detect_language("Das ist ein deutscher Satz und er ist nicht schlecht.") == "de"
    assert any("langdetect is not installed" in str(w.message) for w in caught)
    assert not language.langdetect_available()
