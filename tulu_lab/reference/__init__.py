"""The Tülu 3 paper's published numbers, as pandas DataFrames with their citations.

    >>> from tulu_lab.reference import paper_table, available_tables
    >>> df = paper_table("main_405b")
    >>> df.attrs["source"], df.attrs["flags"]

Every table is shipped exactly as printed in its source (see README.md in this folder for the
citations and the seven flagged inconsistencies). Nothing here corrects a printed number: a figure that
shows one of the flagged cells says so in its footnote instead.

Tidy ("long") views for plotting:
- ``long_table(name)``: benchmark, setting, model, value for the results tables.
- ``table4_long()``: Table 4 (405B comparison) in that shape.
- ``tulu3_stage_scores(version)``: Tülu 3 SFT -> DPO -> RLVR checkpoints at each scale, one version only.
- ``average_mismatches(name)`` / ``check_averages(wide, rows)``: averaged rows whose printed value
  differs from the mean of their cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

# ----------------------------------------------------------------------------------------------
# Sources and flags (the same text as README.md; tests check the two agree on the flag numbers)
# ----------------------------------------------------------------------------------------------

SOURCES: dict[str, str] = {
    "P5": (
        "Lambert et al., \"Tülu 3: Pushing Frontiers in Open Language Model Post-Training\", "
        "arXiv:2411.15124v5 (14 Apr 2025)"
    ),
    "MC": "Model card of allenai/Llama-3.1-Tulu-3-405B (Hugging Face Hub)",
    "OI": "allenai/open-instruct docs/tulu3.md (commit 9157f8ea3)",
    "BLOG": (
        "Ai2 blog, \"Scaling the Tülu 3 post-training recipes to surpass the performance of "
        "DeepSeek V3\", allenai.org/blog/tulu-3-405B (30 Jan 2025)"
    ),
}

FLAGS: dict[int, str] = {
    1: (
        "DeepSeek V3 \"Avg w/ safety\" is printed as 75.9 in Table 4, but its printed cells average "
        "to 78.3. Kept as printed."
    ),
    2: (
        "70B RLVR beta: 0.07 in the open-instruct command and the Table 21 caption; \"0.7\" in the "
        "§6.4 text (a typo)."
    ),
    3: (
        "405B RLVR: response length 1024 (paper, open-instruct) vs 2048 (model card); PPO epochs 1 "
        "(Table 35) vs 4 (model card, open-instruct); episodes 300k (Table 35) vs 400k (open-instruct); "
        "the run stopped after 75 steps (about 139k episodes)."
    ),
    4: (
        "405B compute: 32 nodes = 256 GPUs; vLLM tensor parallel 16 for generation; the open-instruct "
        "command uses 232 actor GPUs (batch 232 x 8 = 1856); the paper and blog say \"240\"."
    ),
    5: "Table 23 labels IFEval \"Strict\", but its values are the prompt-loose numbers.",
    6: "\"GPT-4o (11-24)\" is printed that way in the paper; most likely gpt-4o-2024-11-20.",
    7: (
        "Table 33, Llama 3.1 8B Instruct: the printed average is 36.4, but the seven transcribed cells "
        "average to 37.4. Not yet resolved against the PDF. Kept as printed."
    ),
}


@dataclass(frozen=True)
class _TableInfo:
    file: str
    description: str
    sources: tuple[str, ...]  # keys of SOURCES
    where: str  # table / figure numbers inside the sources
    flags: tuple[int, ...] = ()
    version: str | None = None  # "v1" (Nov 2024) or "v5" (Apr 2025) for the results tables
    label_column: str = "benchmark"  # the column that names the rows


_TABLES: dict[str, _TableInfo] = {
    "main_405b": _TableInfo(
        "main_405b.csv",
        "Tülu 3 405B SFT/DPO/RLVR vs Llama 3.1 405B Instruct, Hermes 3 405B, DeepSeek V3, GPT-4o",
        ("P5", "MC"), "Table 4 (= model card table)", flags=(1, 6), version="v5",
    ),
    "main_8b_v5": _TableInfo(
        "main_8b_v5.csv", "Tülu 3 8B results, baselines re-evaluated in v5",
        ("P5",), "8B results table (v5)", version="v5",
    ),
    "main_70b_v5": _TableInfo(
        "main_70b_v5.csv", "Tülu 3 70B results, baselines re-evaluated in v5",
        ("P5",), "70B results table (v5)", version="v5",
    ),
    "main_8b_v1_modelcard": _TableInfo(
        "main_8b_v1_modelcard.csv", "Tülu 3 8B results as released in November 2024",
        ("MC", "P5"), "model card; = paper Tables 23, 31", version="v1",
    ),
    "main_70b_v1_modelcard": _TableInfo(
        "main_70b_v1_modelcard.csv", "Tülu 3 70B results as released in November 2024",
        ("MC", "P5"), "model card; = paper Tables 23, 31", version="v1",
    ),
    "table23_rlvr_vs_dpo": _TableInfo(
        "table23_rlvr_vs_dpo.csv", "RLVR vs DPO checkpoints at 8B and 70B",
        ("P5",), "Table 23", flags=(5,), version="v1",
    ),
    "table31_dev_vs_unseen": _TableInfo(
        "table31_dev_vs_unseen.csv", "development vs unseen evaluation per skill",
        ("P5",), "Table 31", label_column="skill",
    ),
    "table33_unseen": _TableInfo(
        "table33_unseen.csv", "unseen evaluation suite", ("P5",), "Table 33", flags=(7,),
    ),
    "table9_10_sft": _TableInfo(
        "table9_10_sft.csv", "SFT mixes and their ablations", ("P5",), "Tables 9, 10",
        label_column="model",
    ),
    "table18_dpo_algos": _TableInfo(
        "table18_dpo_algos.csv", "preference-tuning algorithm comparison", ("P5",), "Table 18",
        label_column="algorithm",
    ),
    "hparams": _TableInfo(
        "hparams.csv", "SFT / DPO / RM / RLVR hyperparameters at 8B, 70B, 405B (source per row)",
        ("P5", "OI", "MC"), "Tables 11, 20, 21, 34, 35, 36; §6.4, §8.1", flags=(2, 3, 4),
        label_column="param",
    ),
    "datasets": _TableInfo(
        "datasets.csv", "sizes of the SFT mix, preference mixes and RLVR prompt sets (source per row)",
        ("P5",), "Tables 7, 15, 22; dataset cards", label_column="dataset",
    ),
    "figures": _TableInfo(
        "figures.json", "what the RLVR figures plot: axis (tick) ranges and reported findings",
        ("P5", "BLOG"), "Figures 19-23, 25", flags=(3, 4), label_column="figure",
    ),
}

# Results tables whose first row(s) are averages of the benchmark rows below them.
_AVERAGED_ROWS: dict[str, dict[str, tuple[str, ...] | None]] = {
    # row label -> the rows it averages (None: every non-average row)
    "main_405b": {"Avg_wo_safety": ("~Safety",), "Avg_w_safety": None},
    "main_8b_v5": {"Avg": None},
    "main_70b_v5": {"Avg": None},
    "main_8b_v1_modelcard": {"Avg": None},
    "main_70b_v1_modelcard": {"Avg": None},
    "table23_rlvr_vs_dpo": {"Avg": None},
    "table31_dev_vs_unseen": {"Avg": None},
    "table33_unseen": {"Avg": None},
}

# The Tülu 3 checkpoint columns of each version's results tables, by scale and stage.
_STAGE_COLUMNS: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "v5": {
        "8B": ("main_8b_v5", {"SFT": "Tulu-3-8B-SFT", "DPO": "Tulu-3-8B-DPO", "RLVR": "Tulu-3-8B"}),
        "70B": ("main_70b_v5", {"SFT": "Tulu-3-70B-SFT", "DPO": "Tulu-3-70B-DPO", "RLVR": "Tulu-3-70B"}),
        "405B": ("main_405b", {"SFT": "Tulu-3-405B-SFT", "DPO": "Tulu-3-405B-DPO", "RLVR": "Tulu-3-405B"}),
    },
    "v1": {
        "8B": ("main_8b_v1_modelcard", {"SFT": "Tulu-3-8B-SFT", "DPO": "Tulu-3-8B-DPO", "RLVR": "Tulu-3-8B"}),
        "70B": ("main_70b_v1_modelcard", {"SFT": "Tulu-3-70B-SFT", "DPO": "Tulu-3-70B-DPO", "RLVR": "Tulu-3-70B"}),
    },
}

_RESULTS_TABLES = (
    "main_405b", "main_8b_v5", "main_70b_v5", "main_8b_v1_modelcard", "main_70b_v1_modelcard",
    "table23_rlvr_vs_dpo", "table33_unseen",
)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def available_tables() -> list[str]:
    """Names accepted by :func:`paper_table`, in a stable order."""
    return list(_TABLES)


def _info(name: str) -> _TableInfo:
    if name not in _TABLES:
        raise KeyError(f"unknown paper table {name!r}; available: {', '.join(_TABLES)}")
    return _TABLES[name]


def citation(*names: str) -> str:
    """One-line citation of one or more tables: their sources and where in them the numbers are printed."""
    infos = [_info(name) for name in names]
    keys = dict.fromkeys(key for info in infos for key in info.sources)
    wheres = dict.fromkeys(info.where for info in infos)
    return "; ".join(SOURCES[key] for key in keys) + f" [{'; '.join(wheres)}]"


def _read_text(file: str) -> str:
    return resources.files(__name__).joinpath(file).read_text(encoding="utf-8")


def paper_figures() -> dict[str, Any]:
    """figures.json as a dict: per RLVR figure, its axis (tick) ranges and the reported findings."""
    return json.loads(_read_text("figures.json"))


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out.append((prefix, value))


def _figures_frame() -> pd.DataFrame:
    rows = []
    for figure, content in paper_figures().items():
        if figure.startswith("_"):  # the file-level note goes into attrs instead
            continue
        fields: list[tuple[str, Any]] = []
        _flatten("", content, fields)
        rows.extend({"figure": figure, "field": field, "value": value} for field, value in fields)
    return pd.DataFrame(rows, columns=["figure", "field", "value"])


def paper_table(name: str) -> pd.DataFrame:
    """Load one published table by name (see :func:`available_tables`).

    Numbers are exactly as printed. ``df.attrs`` carries:
    ``table`` (the name), ``description``, ``source`` (citation string), ``flags`` (list of the
    README flags that concern this table, as "N. text"), ``version`` ("v1"/"v5" for results tables,
    else None). For ``"figures"`` the frame has one row per (figure, field) with the nested JSON keys
    joined by dots, e.g. ``fig25_405b_rlvr`` / ``endpoints_from_tables.MATH_4shot_flex.405B_RLVR``.

    Raises KeyError naming the available tables when ``name`` is unknown.
    """
    info = _info(name)
    if info.file.endswith(".json"):
        df = _figures_frame()
        df.attrs["note"] = paper_figures().get("_note", "")
    else:
        # Keep printed strings such as "n/a" as they are; only empty cells become NaN.
        with resources.files(__name__).joinpath(info.file).open("r", encoding="utf-8") as handle:
            df = pd.read_csv(handle, keep_default_na=False, na_values=[""])
    df.attrs["table"] = name
    df.attrs["description"] = info.description
    df.attrs["source"] = citation(name)
    df.attrs["flags"] = [f"{number}. {FLAGS[number]}" for number in info.flags]
    df.attrs["version"] = info.version
    return df


# ----------------------------------------------------------------------------------------------
# Tidy views
# ----------------------------------------------------------------------------------------------


def long_table(name: str) -> pd.DataFrame:
    """A results table in tidy form: columns benchmark, setting, model, value (rows in printed order).

    Only for the benchmark-by-model tables (main_*, table23_rlvr_vs_dpo, table33_unseen).
    """
    if name not in _RESULTS_TABLES:
        raise KeyError(f"long_table needs a benchmark-by-model table, one of {', '.join(_RESULTS_TABLES)}; "
                       f"got {name!r}")
    wide = paper_table(name)
    models = [column for column in wide.columns if column not in ("benchmark", "setting")]
    long = wide.melt(id_vars=["benchmark", "setting"], value_vars=models, var_name="model", value_name="value")
    # melt orders by model; order by printed row first so a plot reads like the table
    long["_row"] = long["benchmark"].map({b: i for i, b in enumerate(wide["benchmark"])})
    long["_col"] = long["model"].map({m: i for i, m in enumerate(models)})
    long = long.sort_values(["_row", "_col"]).drop(columns=["_row", "_col"]).reset_index(drop=True)
    long["setting"] = long["setting"].fillna("")
    long.attrs.update(wide.attrs)
    return long


def table4_long() -> pd.DataFrame:
    """Table 4 (Tülu 3 405B vs Llama 3.1 405B Instruct, Hermes 3, DeepSeek V3, GPT-4o), tidy."""
    return long_table("main_405b")


def tulu3_stage_scores(version: str = "v5") -> pd.DataFrame:
    """Tülu 3 SFT, DPO and final (RLVR) checkpoints at each scale, from ONE version of the results.

    Columns: model ("Tülu 3 8B" ...), scale, stage, benchmark, setting, value, table, version.
    Averaged rows are dropped: they average different task sets at different scales.
    ``version`` is "v5" (8B, 70B, 405B) or "v1" (8B, 70B; the November 2024 numbers).
    """
    if version not in _STAGE_COLUMNS:
        raise ValueError(f"version must be one of {sorted(_STAGE_COLUMNS)}, got {version!r}")
    frames = []
    for scale, (table, columns) in _STAGE_COLUMNS[version].items():
        wide = paper_table(table)
        wide = wide[~wide["benchmark"].isin(_AVERAGED_ROWS.get(table, {}))]
        for stage, column in columns.items():
            frames.append(pd.DataFrame({
                "model": f"Tülu 3 {scale}",
                "scale": scale,
                "stage": stage,
                "benchmark": wide["benchmark"].to_numpy(),
                "setting": wide["setting"].fillna("").to_numpy(),
                "value": wide[column].to_numpy(dtype=float),
                "table": table,
                "version": version,
            }))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["source"] = citation(*(table for table, _ in _STAGE_COLUMNS[version].values()))
    df.attrs["flags"] = []
    df.attrs["version"] = version
    return df


def check_averages(
    wide: pd.DataFrame,
    averaged_rows: dict[str, tuple[str, ...] | None],
    tolerance: float = 0.05,
) -> pd.DataFrame:
    """Compare printed average rows of a wide table (rows indexed by label) with their cells' mean.

    ``averaged_rows`` maps an average row's label to the rows it averages: None for every
    non-average row, or ("~X", ...) for every non-average row except X. Only numeric columns are
    checked. Returns columns row, model, printed, recomputed, difference for rows off by more than
    ``tolerance`` (empty when all agree).
    """
    named = list(averaged_rows) + [m[1:] for ms in averaged_rows.values() for m in (ms or ()) if m.startswith("~")]
    missing = [row for row in named if row not in wide.index]
    if missing:
        raise KeyError(f"rows {missing} needed to check the averages are not in the table's rows {list(wide.index)}")
    numeric = wide.select_dtypes("number")
    cells = numeric.drop(index=list(averaged_rows))
    found = []
    for row, members in averaged_rows.items():
        excluded = [member[1:] for member in (members or ()) if member.startswith("~")]
        recomputed = cells.drop(index=excluded).mean()
        for model in numeric.columns:
            printed = float(numeric.loc[row, model])
            difference = printed - float(recomputed[model])
            # a small epsilon so 0.05 rounding differences count as agreeing
            if abs(difference) > tolerance + 1e-9:
                found.append({"row": row, "model": model, "printed": printed,
                              "recomputed": round(float(recomputed[model]), 2),
                              "difference": round(difference, 2)})
    return pd.DataFrame(found, columns=["row", "model", "printed", "recomputed", "difference"])


def averaged_rows(name: str) -> dict[str, tuple[str, ...] | None]:
    """The average rows of a results table and what each averages (see :func:`check_averages`)."""
    if name not in _AVERAGED_ROWS:
        raise KeyError(f"no averaged rows known for {name!r}; tables with averages: {', '.join(_AVERAGED_ROWS)}")
    return dict(_AVERAGED_ROWS[name])


def average_mismatches(name: str, tolerance: float = 0.05) -> pd.DataFrame:
    """Averaged rows of a packaged table whose printed value differs from the mean of its cells."""
    rows = averaged_rows(name)
    wide = paper_table(name).set_index(_TABLES[name].label_column)
    return check_averages(wide, rows, tolerance)


__all__ = [
    "FLAGS", "SOURCES", "available_tables", "average_mismatches", "averaged_rows", "check_averages",
    "citation", "long_table",
    "paper_figures", "paper_table", "table4_long", "tulu3_stage_scores",
]
