"""Language identification for the "respond in language X" and "English only" instructions.

The official IFEval code uses ``langdetect``; when that package is installed, ``detect_language``
uses it too (with a fixed seed, because langdetect samples at random and otherwise gives different
answers for the same short text). Without it, a small offline detector takes over:

- non-Latin scripts decide most languages at once (Hangul -> ko, kana -> ja, Han -> zh-cn,
  Thai, Hebrew, Greek, Bengali, Gurmukhi, Gujarati, Tamil, Telugu, Kannada, Malayalam);
  within a shared script, letters and common words separate hi/mr/ne (Devanagari), ar/fa/ur
  (Arabic script) and ru/uk/bg/mk (Cyrillic);
- Latin-script text is scored against short lists of very common words for 14 languages
  (en es pt fr de it nl pl fi sw vi tr id sv).

Limits of the fallback: it knows only those languages, needs a few common words to decide a
Latin-script language (one-word answers come back as None) and cannot tell apart close
relatives it has no list for (Catalan reads as Spanish or French, Norwegian as Swedish).
"""

from __future__ import annotations

import threading
import unicodedata
import warnings
from collections import Counter

__all__ = ["detect_language", "detect_language_offline", "langdetect_available", "prepare_language_detector"]

LANGUAGE_SAMPLE_CHARS = 100_000
_langdetect_lock = threading.Lock()
_langdetect_ready = False
_fallback_warned = False


def langdetect_available() -> bool:
    """True when the ``langdetect`` package (what IFEval uses) can be imported."""
    try:
        import langdetect  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_language_detector() -> bool:
    """Load langdetect's language profiles once (about a second), so that no time-bounded check
    pays for it. False when langdetect is not installed (the offline detector needs nothing)."""
    global _langdetect_ready
    try:
        import langdetect
    except ImportError:
        return False
    with _langdetect_lock:
        if not _langdetect_ready:
            langdetect.DetectorFactory.seed = 0
            langdetect.detector_factory.init_factory()
            _langdetect_ready = True
    return True


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the language of ``text`` ("en", "hi", "zh-cn", ...) or None if unknown.

    Uses ``langdetect`` when installed (seeded, so repeated calls agree), else
    ``detect_language_offline``. Only the first ``LANGUAGE_SAMPLE_CHARS`` characters are read:
    langdetect itself keeps only 10,000 characters (after removing URLs and e-mail addresses),
    and its e-mail pattern backtracks ~64 steps per character on long runs of letters.
    """
    global _fallback_warned
    text = text[:LANGUAGE_SAMPLE_CHARS]
    if not prepare_language_detector():
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(
                "langdetect is not installed; using tulu_lab's small offline language detector "
                "(see tulu_lab.rewards.language for its limits). pip install langdetect for "
                "IFEval's own detector.",
                stacklevel=2,
            )
        return detect_language_offline(text)
    import langdetect
    from langdetect.lang_detect_exception import LangDetectException

    try:
        return langdetect.detect(text)
    except LangDetectException:
        return None


# --- offline fallback -----------------------------------------------------------------------

# Unicode script name (first word of the character name) -> language, for one-language scripts.
_SCRIPT_LANGUAGE = {
    "HANGUL": "ko",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "CJK": "zh-cn",
    "THAI": "th",
    "HEBREW": "he",
    "GREEK": "el",
    "BENGALI": "bn",
    "GURMUKHI": "pa",
    "GUJARATI": "gu",
    "TAMIL": "ta",
    "TELUGU": "te",
    "KANNADA": "kn",
    "MALAYALAM": "ml",
}

_DEVANAGARI_WORDS = {
    "hi": set("है हैं और के की का को में से यह वह था थे नहीं भी लिए पर होता करते".split()),
    "mr": set("आहे आहेत आणि हे या व की करण्यासाठी त्या त्याच्या मध्ये होते नाही पण आपण".split()),
    "ne": set("छ छन् र मा हो पनि गर्न थियो भएको लागि यो त्यो हुन्छ गरेको".split()),
}

_LATIN_WORDS = {
    "en": "the and of to is in that it for you with are this was on be as have not but",
    "es": "el la de que y en los las es por un una para con no se del lo como más",
    "pt": "o a de que e do da em um uma para com não os as é dos das se por mais",
    "fr": "le la les de des et est un une que en du pour dans qui pas il elle sur au",
    "de": "der die das und ist nicht ein eine zu den mit von sich des auf für im dem auch",
    "it": "il la di che e un una per non sono del della gli le con si è al anche",
    "nl": "de het een en van is dat niet op te zijn voor met die er ook maar",
    "pl": "i w na nie się że jest do to z jak co ale o od po tak dla czy",
    "fi": "ja on ei se että oli hän mutta kuin ovat tai myös sen ole mitä joka",
    "sw": "na ya wa kwa ni katika za la kuwa hii cha ili lakini pia kama sana",
    "vi": "và của là có không được những một các cho với người này trong đã",
    "tr": "ve bir bu da de için ile ne çok olarak daha gibi ama var değil",
    "id": "dan yang di ini itu dengan untuk tidak dari dalam akan ada juga saya",
    "sv": "och att det som en är på för med av inte den till har jag om",
}
_LATIN_WORD_SETS = {code: set(words.split()) for code, words in _LATIN_WORDS.items()}
_VIETNAMESE_LETTERS = set("ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")
# Split on whitespace, not \w: Indic vowel signs are not word characters to Python's re.
_PUNCTUATION = ".,;:!?\"'()[]{}«»“”‘’।॥،؟"


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else ""


def detect_language_offline(text: str) -> str | None:
    """Offline approximation of ``langdetect.detect`` (see the module docstring for its limits)."""
    scripts = Counter(_script(c) for c in text if c.isalpha())
    if not scripts:
        return None
    # Japanese text mixes kana with Han characters: any kana in CJK text means Japanese.
    kana = scripts["HIRAGANA"] + scripts["KATAKANA"]
    if kana and kana + scripts["CJK"] >= scripts["LATIN"]:
        return "ja"
    script, _ = scripts.most_common(1)[0]
    if script in _SCRIPT_LANGUAGE:
        return _SCRIPT_LANGUAGE[script]
    words = [w.strip(_PUNCTUATION).lower() for w in text.split()]
    if script == "DEVANAGARI":
        return _best_by_words(words, _DEVANAGARI_WORDS) or "hi"
    if script == "ARABIC":
        if any(c in "ےںٹڈڑۓ" for c in text):
            return "ur"
        if any(c in "پچژگکی" for c in text):
            return "fa"
        return "ar"
    if script == "CYRILLIC":
        lowered = text.lower()
        if any(c in "іїєґ" for c in lowered):
            return "uk"
        if any(c in "ѓќѕјљњ" for c in lowered):
            return "mk"
        if "ъ" in lowered and not any(c in "ыэё" for c in lowered):
            return "bg"
        return "ru"
    if script == "LATIN":
        if sum(c in _VIETNAMESE_LETTERS for c in text.lower()) >= 2:
            return "vi"
        return _best_by_words(words, _LATIN_WORD_SETS)
    return None


def _best_by_words(words: list[str], lexicons: dict[str, set[str]]) -> str | None:
    """Language whose common-word list covers most of ``words``; None when none matches."""
    scores = {code: sum(w in lexicon for w in words) for code, lexicon in lexicons.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else None
