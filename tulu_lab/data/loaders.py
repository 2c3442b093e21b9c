"""Loaders for the benchmarks and training formats of the Tülu 3 recipe.

Every loader takes a ``source``: either a local file (jsonl, json, tsv/csv or parquet), a folder
holding ``{split}.jsonl`` (or .json/.tsv/.csv/.parquet), or a Hugging Face ``datasets`` id, which is
tried only when ``source`` is not an existing path. Without a source, GSM8K (test), MATH-500 and
IFEval are read from the copies shipped with the package (``tulu_lab.data.shipped``). Each returns a
plain ``list[dict]`` in file order, validated row by row: a malformed row raises :class:`DataFormatError`
naming the file, the line (or row) and the field, and what was expected, so a bad file is fixed in one look.

Formats
  GSM8K   ``question``, ``answer`` (worked solution ending "#### N")          -> load_gsm8k
  MATH    MATH-500 ``problem/solution/answer/subject/level/unique_id``;
          the original Hendrycks layout (``type``, "Level 3", no ``answer``) -> load_math
  IFEval  Google jsonl ``key, prompt, instruction_id_list, kwargs``           -> load_ifeval
  PopQA   tsv with ``question`` and ``possible_answers`` (a JSON list)        -> load_popqa
  Tülu    SFT ``messages``; preference ``chosen``/``rejected`` (+ ``prompt``);
          RLVR ``messages``, ``ground_truth``, ``dataset``                   -> load_sft / load_preference / load_rlvr
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from tulu_lab.data.shipped import default_source

# Hugging Face ids used when a loader is called without a local file.
GSM8K_HF_ID = "openai/gsm8k"          # config "main"; splits train (7,473) / test (1,319)
MATH500_HF_ID = "HuggingFaceH4/MATH-500"  # split "test" (500)
IFEVAL_HF_ID = "google/IFEval"        # split "train" (541 prompts; it is the benchmark)
POPQA_HF_ID = "akariasai/PopQA"       # split "test" (14,267)

LOCAL_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".parquet")
CHAT_ROLES = ("system", "user", "assistant")

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")
_LEVEL = re.compile(r"^\s*(?:Level\s*)?([0-9]+)\s*$", re.IGNORECASE)


class DataFormatError(ValueError):
    """A row that does not have the expected shape.

    The message reads ``FILE, line N: field 'F': expected E (got G)``; the parts are kept as
    attributes (``source``, ``location``, ``field``, ``expected``) for programs that need them.
    """

    def __init__(self, source: str, location: str, field: str, expected: str, got: Any = None,
                 *, show_got: bool = True):
        self.source, self.location, self.field, self.expected = source, location, field, expected
        message = f"{source}, {location}: field '{field}': expected {expected}"
        if show_got:
            shown = repr(got)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message += f" (got {type(got).__name__} {shown})"
        super().__init__(message)


class DataSourceNotFoundError(FileNotFoundError):
    """Neither a local file nor a loadable Hugging Face dataset was found for ``source``."""


# ---------------------------------------------------------------------------------------------
# Reading records with their location
# ---------------------------------------------------------------------------------------------

class _Row:
    """One raw record with where it came from, for error messages."""

    __slots__ = ("source", "location", "data")

    def __init__(self, source: str, location: str, data: Any):
        self.source, self.location, self.data = source, location, data

    def fail(self, field: str, expected: str, got: Any = None, *, show_got: bool = True):
        raise DataFormatError(self.source, self.location, field, expected, got, show_got=show_got)


def _decode(path: Path, content: bytes) -> str:
    """UTF-8 text of a data file (a UTF-8 byte-order mark dropped), or an error naming file and line."""
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(str(path), "line 1", "<file>", "UTF-8 text; this file is UTF-16 (it starts with a "
                              "UTF-16 byte-order mark): save it as UTF-8", show_got=False)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = " (NUL bytes: UTF-16 or binary?)" if b"\x00" in content[:4096] else " (latin-1 / cp1252?)"
        raise DataFormatError(str(path), f"line {line}", "<text>",
                              f"UTF-8 text; byte 0x{content[exc.start]:02x} at column {column} is not UTF-8"
                              f"{hint}: convert the file to UTF-8", show_got=False) from None


def _parse_json(text: str, path: Path, location: str | None, expected: str) -> Any:
    """json.loads with errors naming the file and line: ``location`` for one row, None for a whole file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where, field = (location, "<row>") if location else (f"line {exc.lineno}", "<file>")
        raise DataFormatError(str(path), where, field, f"{expected} ({exc.msg} at column {exc.colno})",
                              show_got=False) from None
    except RecursionError:
        where, field = (location, "<row>") if location else ("line 1", "<file>")
        raise DataFormatError(str(path), where, field, f"{expected} (nested too deeply to parse)",
                              show_got=False) from None


def _read_jsonl(path: Path) -> Iterator[_Row]:
    text = _decode(path, path.read_bytes())
    # Split on "\n" only: JSON strings may hold U+2028 and other characters splitlines() breaks at.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # a trailing blank line is common and harmless
        data = _parse_json(line, path, f"line {line_number}", "one JSON object per line")
        yield _Row(str(path), f"line {line_number}", data)


def _read_json(path: Path) -> Iterator[_Row]:
    data = _parse_json(_decode(path, path.read_bytes()), path, None, "a JSON list of objects")
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style wrappers
    if not isinstance(data, list):
        raise DataFormatError(str(path), "line 1", "<file>", "a JSON list of objects", data)
    for index, item in enumerate(data):
        yield _Row(str(path), f"item {index}", item)


def _read_delimited(path: Path, delimiter: str) -> Iterator[_Row]:
    # Decoded first (utf-8-sig): a byte-order mark would otherwise become part of the first header name.
    handle = io.StringIO(_decode(path, path.read_bytes()), newline="")
    reader = csv.DictReader(handle, delimiter=delimiter)
    if not reader.fieldnames:
        return
    for record in reader:
        # reader.line_num is the physical line the record ends on (quoted fields may span lines)
        location = f"line {reader.line_num}"
        if None in record:
            raise DataFormatError(str(path), location, "<row>",
                                  f"{len(reader.fieldnames)} tab/comma-separated columns as in the header",
                                  f"{len(reader.fieldnames) + len(record[None])} columns", show_got=True)
        if any(value is None for value in record.values()):
            missing = [k for k, v in record.items() if v is None][0]
            raise DataFormatError(str(path), location, missing,
                                  f"{len(reader.fieldnames)} columns as in the header (row is short)",
                                  show_got=False)
        yield _Row(str(path), location, record)


def _read_parquet(path: Path) -> Iterator[_Row]:
    import pyarrow.parquet as pq  # imported here: only parquet files need it

    table = pq.read_table(path)
    for index, record in enumerate(table.to_pylist()):
        yield _Row(str(path), f"row {index}", record)


def _read_file(path: Path) -> Iterator[_Row]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".tsv":
        return _read_delimited(path, "\t")
    if suffix == ".csv":
        return _read_delimited(path, ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(LOCAL_SUFFIXES)}")


def _nonempty(rows: Iterator[_Row], path: Path, limit: int | None) -> Iterator[_Row]:
    """The rows of a local file; a file without any is an error (it is never what was meant)."""
    count = 0
    for row in rows:
        count += 1
        yield row
    if count == 0 and limit != 0:
        raise DataFormatError(str(path), "line 1", "<file>", "at least one data row; the file is empty "
                              "(or holds only blank lines or a header)", show_got=False)


def _find_in_folder(folder: Path, split: str | None) -> Path:
    stems = [split] if split else []
    looked_for = [folder / f"{stem}{suffix}" for stem in stems for suffix in LOCAL_SUFFIXES]
    for candidate in looked_for:
        if candidate.is_file():
            return candidate
    data_files = sorted(p for p in folder.iterdir() if p.suffix.lower() in LOCAL_SUFFIXES)
    if len(data_files) == 1:
        return data_files[0]
    raise DataSourceNotFoundError(
        f"{folder} is a folder; looked for {', '.join(p.name for p in looked_for) or 'a single data file'} "
        f"in it and found {', '.join(p.name for p in data_files) or 'no data files'}. "
        f"Pass the file itself or split=<its name without suffix>."
    )


def _read_hf(dataset_id: str, config: str | None, split: str | None, limit: int | None,
             what: str, local_hint: str) -> Iterator[_Row]:
    described = f"Hugging Face dataset {dataset_id!r} (" + (f"config {config!r}, " if config else "") \
        + f"split {split!r})"
    try:
        import datasets

        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # offline, unknown id, gated, bad split: all mean "not available here"
        raise DataSourceNotFoundError(
            f"Could not load {what}: {dataset_id!r} is not an existing local path, and loading the "
            f"{described} failed ({type(exc).__name__}: {exc}). Without network access, pass the path of "
            f"a local file instead. Expected format: {local_hint}"
        ) from exc
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    source = f"{dataset_id}[{split}]"
    for index, record in enumerate(dataset):
        yield _Row(source, f"row {index}", record)


def _rows(source: str | os.PathLike, *, split: str | None, config: str | None, limit: int | None,
          what: str, local_hint: str) -> Iterator[_Row]:
    """Yield raw records from a local file/folder or, failing that, a Hugging Face dataset."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    path = Path(source)
    if path.is_dir():
        path = _find_in_folder(path, split)
    if path.is_file():
        rows = _nonempty(_read_file(path), path, limit)
    elif str(source).lower().endswith(LOCAL_SUFFIXES) or isinstance(source, Path):
        raise DataSourceNotFoundError(f"Could not load {what}: no such file {str(source)!r}. "
                                      f"Expected format: {local_hint}")
    else:
        rows = _read_hf(str(source), config, split, limit, what, local_hint)
    for count, row in enumerate(rows):
        if limit is not None and count >= limit:
            return
        yield row


# ---------------------------------------------------------------------------------------------
# Field checks
# ---------------------------------------------------------------------------------------------

def _record(row: _Row) -> dict:
    if not isinstance(row.data, dict):
        row.fail("<row>", "a JSON object (mapping of field names to values)", row.data)
    return row.data


def _field(row: _Row, name: str, kind: type | tuple[type, ...], expected: str, *, optional: bool = False):
    record = _record(row)
    if name not in record or record[name] is None:
        if optional:
            return None
        row.fail(name, f"{expected} (field is missing)", show_got=False)
    value = record[name]
    # bool is an int subclass: never accept True/False where a number is meant
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        row.fail(name, expected, value)
    return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _nonempty_string(row: _Row, name: str, *, optional: bool = False) -> str | None:
    value = _field(row, name, str, "a string", optional=optional)
    if value is not None and not value.strip():
        row.fail(name, "a non-empty string", value)
    return value


def validate_messages(messages: Any, *, source: str = "<messages>", location: str = "row 0",
                      field: str = "messages", require_assistant_last: bool = False) -> list[dict]:
    """Check a chat: a non-empty list of {"role": system|user|assistant, "content": str}.

    Returns a clean copy holding only ``role`` and ``content``. Raises :class:`DataFormatError`
    naming ``field[i].role`` / ``field[i].content`` on the first problem.
    """
    row = _Row(source, location, None)
    if not isinstance(messages, list) or not messages:
        row.fail(field, "a non-empty list of {role, content} messages", messages)
    clean = []
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            row.fail(where, "a message object with 'role' and 'content'", message)
        if "role" not in message:
            row.fail(f"{where}.role", "one of system/user/assistant (field is missing)", show_got=False)
        if message["role"] not in CHAT_ROLES:
            row.fail(f"{where}.role", "one of system/user/assistant", message["role"])
        if "content" not in message:
            row.fail(f"{where}.content", "a string (field is missing)", show_got=False)
        if not isinstance(message["content"], str):
            row.fail(f"{where}.content", "a string", message["content"])
        if message["role"] == "system" and index != 0:
            row.fail(f"{where}.role", "'system' only as the first message", message["role"])
        clean.append({"role": message["role"], "content": message["content"]})
    if require_assistant_last and clean[-1]["role"] != "assistant":
        row.fail(f"{field}[{len(clean) - 1}].role", "the last message to be 'assistant'", clean[-1]["role"])
    return clean


def _messages(row: _Row, name: str, *, require_assistant_last: bool) -> list[dict]:
    record = _record(row)
    if name not in record or record[name] is None:
        row.fail(name, "a non-empty list of {role, content} messages (field is missing)", show_got=False)
    value = record[name]
    if isinstance(value, str):  # some exports store the chat as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            row.fail(name, "a list of {role, content} messages (a JSON string that does not parse)", value)
    return validate_messages(value, source=row.source, location=row.location, field=name,
                             require_assistant_last=require_assistant_last)


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------

def gsm8k_final_answer(answer: str) -> str | None:
    """The text after the last "####" of a GSM8K worked solution (e.g. "18", "1,000"), or None."""
    for line in reversed(answer.strip().splitlines()):
        match = _GSM8K_FINAL.search(line)
        if match:
            return match.group(1)
    return None


def _is_gsm8k_number(answer: str) -> bool:
    from tulu_lab.rewards import gsm8k_gold_answer

    try:
        gsm8k_gold_answer(answer)
    except ValueError:
        return False
    return True


def _check_ground_truth(row: _Row, dataset: str, ground_truth: str) -> None:
    """Fail now, naming the row, on a ground truth its verifier could never use (not mid-run)."""
    from tulu_lab.rewards import VERIFIERS, gsm8k_gold_answer, verify_ifeval

    name = dataset.strip().lower()
    if name not in VERIFIERS:
        row.fail("dataset", f"one of {sorted(VERIFIERS)} (any case): the verifier to use", dataset)
    try:
        if name == "gsm8k":
            gsm8k_gold_answer(ground_truth)
        elif name == "ifeval":
            verify_ifeval("", ground_truth)  # parses it and checks the arguments against the function
        elif not ground_truth.strip():
            raise ValueError("the answer is empty")
    except ValueError as exc:
        row.fail("ground_truth", f"a ground truth the {name} verifier accepts ({exc})", ground_truth)


def remove_calculator_annotations(solution: str) -> str:
    """Drop GSM8K's ``<<48/2=24>>`` calculator annotations, keeping the visible text."""
    return re.sub(r"<<[^<>]*>>", "", solution)


def load_gsm8k(source: str | os.PathLike | None = None, *, split: str = "test", limit: int | None = None,
               config: str = "main") -> list[dict]:
    """GSM8K rows: ``{"id", "question", "answer", "final_answer"}``.

    Without ``source`` the test split is the copy shipped with the package (1,319 problems) and the
    train split is read from Hugging Face (``openai/gsm8k``).

    ``answer`` is the worked solution as published (with ``<<...>>`` calculator annotations and the
    closing "#### N" line); ``final_answer`` is the text after "####" as written (the RLVR ground
    truth, e.g. "18"; 93 of the 8,792 answers carry thousands commas, e.g. "1,080"). ``id`` is
    ``"gsm8k/{split}/{index}"``.
    """
    if source is None:
        source = default_source("gsm8k", split, GSM8K_HF_ID)
    rows = []
    hint = "a jsonl file with one {\"question\": str, \"answer\": str ending in '#### N'} per line " \
           "(github.com/openai/grade-school-math, grade_school_math/data/{train,test}.jsonl)."
    for index, row in enumerate(_rows(source, split=split, config=config, limit=limit,
                                      what="GSM8K", local_hint=hint)):
        question = _nonempty_string(row, "question")
        answer = _nonempty_string(row, "answer")
        final = gsm8k_final_answer(answer)
        if final is None or not _is_gsm8k_number(final):
            row.fail("answer", "a worked solution whose last line is '#### <number>'", answer)
        rows.append({"id": f"gsm8k/{split}/{index}", "question": question, "answer": answer,
                     "final_answer": final})
    return rows


def last_boxed_content(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces balanced; else None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for position in range(opening, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1:position]
    return None


def load_math(source: str | os.PathLike | None = None, *, split: str = "test", limit: int | None = None,
              config: str | None = None) -> list[dict]:
    r"""MATH rows: ``{"id", "problem", "solution", "answer", "subject", "level"}``.

    Reads the MATH-500 layout (``answer``, ``subject``, integer ``level``, ``unique_id``) and the
    original Hendrycks layout (``type``, ``level`` like "Level 3", no ``answer``: it is taken from the
    last ``\boxed{}`` of the solution). ``level`` is an int, or None where the source says "Level ?".
    Without ``source`` it reads MATH-500 as shipped with the package.
    """
    if source is None:
        source = default_source("math", split, MATH500_HF_ID)
    rows = []
    hint = "a jsonl file with problem/solution/answer/subject/level/unique_id per line (MATH-500, " \
           "github.com/openai/prm800k prm800k/math_splits/test.jsonl)."
    for index, row in enumerate(_rows(source, split=split, config=config, limit=limit,
                                      what="MATH", local_hint=hint)):
        problem = _nonempty_string(row, "problem")
        solution = _nonempty_string(row, "solution")
        answer = _field(row, "answer", str, "a string", optional=True)
        if answer is None:
            answer = last_boxed_content(solution)
            if answer is None:
                row.fail("answer", "a string, or a solution containing \\boxed{...} to take it from",
                         show_got=False)
        record = _record(row)
        subject = record.get("subject", record.get("type"))
        if subject is not None and not isinstance(subject, str):
            row.fail("subject", "a string such as 'Algebra'", subject)
        level = record.get("level")
        if isinstance(level, str):
            match = _LEVEL.match(level)
            if match:
                level = int(match.group(1))
            elif level.strip() in ("Level ?", "?", ""):
                level = None
            else:
                row.fail("level", "an integer 1-5 or a string 'Level N'", level)
        elif level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            row.fail("level", "an integer 1-5 or a string 'Level N'", level)
        unique_id = record.get("unique_id") or f"math/{split}/{index}"
        rows.append({"id": str(unique_id), "problem": problem, "solution": solution, "answer": answer,
                     "subject": subject, "level": level})
    return rows


def load_ifeval(source: str | os.PathLike | None = None, *, split: str = "train",
                limit: int | None = None) -> list[dict]:
    """IFEval prompts: ``{"id", "key", "prompt", "instruction_id_list", "kwargs"}``.

    ``kwargs`` is a list parallel to ``instruction_id_list``; keys whose value is None are dropped
    (the Hugging Face copy stores every possible argument, mostly as None). Without ``source`` it reads
    the 541 prompts as shipped with the package.
    """
    if source is None:
        source = default_source("ifeval", split, IFEVAL_HF_ID)
    rows = []
    hint = "a jsonl file with key/prompt/instruction_id_list/kwargs per line (github.com/google-research/" \
           "google-research, instruction_following_eval/data/input_data.jsonl)."
    for row in _rows(source, split=split, config=None, limit=limit, what="IFEval", local_hint=hint):
        key = _field(row, "key", int, "an integer")
        prompt = _nonempty_string(row, "prompt")
        instruction_ids = _field(row, "instruction_id_list", list, "a list of instruction ids")
        for position, instruction_id in enumerate(instruction_ids):
            if not isinstance(instruction_id, str) or ":" not in instruction_id:
                row.fail(f"instruction_id_list[{position}]", "an id like 'punctuation:no_comma'", instruction_id)
        kwargs = _field(row, "kwargs", list, "a list of argument objects, one per instruction")
        if len(kwargs) != len(instruction_ids):
            row.fail("kwargs", f"{len(instruction_ids)} argument objects (one per instruction id)",
                     f"{len(kwargs)} objects")
        clean_kwargs = []
        for position, arguments in enumerate(kwargs):
            if not isinstance(arguments, dict):
                row.fail(f"kwargs[{position}]", "an object of arguments (may be empty)", arguments)
            clean_kwargs.append({name: value for name, value in arguments.items() if value is not None})
        rows.append({"id": str(key), "key": key, "prompt": prompt,
                     "instruction_id_list": list(instruction_ids), "kwargs": clean_kwargs})
    return rows


def _parse_alias_list(row: _Row, name: str) -> list[str]:
    value = _record(row).get(name)
    if value is None:
        row.fail(name, "a JSON list of answer strings (field is missing)", show_got=False)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            row.fail(name, 'a JSON list of answer strings such as ["Paris", "City of Light"]', value)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a.strip() for a in value):
        row.fail(name, "a non-empty list of non-empty strings", value)
    return value


def load_popqa(source: str | os.PathLike = POPQA_HF_ID, *, split: str = "test",
               limit: int | None = None) -> list[dict]:
    """PopQA rows: ``{"id", "question", "possible_answers", ...other columns}``.

    ``possible_answers`` (a JSON list in the file) becomes a list of alias strings; ``s_pop`` and
    ``o_pop`` (monthly Wikipedia page views) become ints; other columns (subj, prop, obj, ...) are
    kept as they are.
    """
    rows = []
    hint = "a tsv file with a header row including 'question' and 'possible_answers' (a JSON list of " \
           "aliases), like popQA.tsv from github.com/AlexTMallen/adaptive-retrieval."
    for index, row in enumerate(_rows(source, split=split, config=None, limit=limit,
                                      what="PopQA", local_hint=hint)):
        record = dict(_record(row))
        record["question"] = _nonempty_string(row, "question")
        record["possible_answers"] = _parse_alias_list(row, "possible_answers")
        for name in ("s_pop", "o_pop"):
            if name in record and not isinstance(record[name], int):
                try:
                    record[name] = int(str(record[name]).strip())
                except ValueError:
                    row.fail(name, "an integer (monthly page views)", record[name])
        record["id"] = str(record["id"]) if record.get("id") not in (None, "") else f"popqa/{index}"
        rows.append(record)
    return rows


# ---------------------------------------------------------------------------------------------
# Tülu training formats
# ---------------------------------------------------------------------------------------------

def load_records(source: str | os.PathLike, *, split: str | None = "train", config: str | None = None,
                 limit: int | None = None) -> list[dict]:
    """Raw records (no validation beyond each being an object) from a file, folder or HF id."""
    hint = f"a {', '.join(LOCAL_SUFFIXES)} file."
    return [dict(_record(row)) for row in _rows(source, split=split, config=config, limit=limit,
                                                 what=f"records from {source}", local_hint=hint)]


def load_sft(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
             config: str | None = None) -> list[dict]:
    """Tülu SFT rows: ``{"messages": [{role, content}, ...], ...}``, ending with an assistant turn.

    Other fields (``id``, ``source``) are kept. Roles must be system/user/assistant (system first
    only) and contents strings.
    """
    rows = []
    hint = 'a jsonl file with {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]} per line.'
    for row in _rows(source, split=split, config=config, limit=limit, what="SFT rows", local_hint=hint):
        record = dict(_record(row))
        record["messages"] = _messages(row, "messages", require_assistant_last=True)
        if not any(m["role"] == "assistant" for m in record["messages"]):
            row.fail("messages", "at least one assistant message", show_got=False)
        rows.append(record)
    return rows


def load_preference(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
                    config: str | None = None) -> list[dict]:
    """Preference rows: ``{"chosen": [...], "rejected": [...], "prompt"?: str, ...}``.

    ``chosen`` and ``rejected`` are full chats ending with the assistant turn being compared; an
    optional ``prompt`` must be a string.
    """
    rows = []
    hint = 'a jsonl file with {"chosen": [messages], "rejected": [messages]} per line.'
    for row in _rows(source, split=split, config=config, limit=limit, what="preference rows", local_hint=hint):
        record = dict(_record(row))
        record["chosen"] = _messages(row, "chosen", require_assistant_last=True)
        record["rejected"] = _messages(row, "rejected", require_assistant_last=True)
        _field(row, "prompt", str, "a string", optional=True)
        rows.append(record)
    return rows


def load_rlvr(source: str | os.PathLike, *, split: str = "train", limit: int | None = None,
              config: str | None = None) -> list[dict]:
    """RLVR rows: ``{"messages": [...prompt...], "ground_truth": str, "dataset": str}``.

    ``messages`` is the prompt (it ends with a user turn); ``dataset`` names the verifier
    ("gsm8k", "math", "ifeval"); ``ground_truth`` is the answer string (JSON for ifeval).
    """
    rows = []
    hint = 'a jsonl file with {"messages": [...], "ground_truth": "18", "dataset": "gsm8k"} per line.'
    for row in _rows(source, split=split, config=config, limit=limit, what="RLVR rows", local_hint=hint):
        record = dict(_record(row))
        record["messages"] = _messages(row, "messages", require_assistant_last=False)
        if record["messages"][-1]["role"] != "user":
            row.fail(f"messages[{len(record['messages']) - 1}].role", "the prompt to end with a 'user' message",
                     record["messages"][-1]["role"])
        ground_truth = _field(row, "ground_truth", str, "a string (the verifiable answer)")
        _check_ground_truth(row, _nonempty_string(row, "dataset"), ground_truth)
        rows.append(record)
    return rows
