"""Figures for tulu-lab: the paper's numbers beside what the workbench measures.

Every ``plot_*`` function takes tidy pandas DataFrames and returns a ``matplotlib.figure.Figure``
built with the object API (no pyplot state, so it works under Agg, in tests and in notebooks).
``save_fig(fig, "NN_name", data=df)`` writes ``figures/NN_name.png`` and ``figures/NN_name.csv``; when
``data`` is omitted it writes the exact frame the figure drew (``plotted_data(fig)``).

One visual language throughout:
- paper numbers are faded and hatched (bars) or dashed with hollow markers (lines), and their legend
  labels start with "paper:"; numbers measured by this workbench are solid and start with
  "measured here:";
- every figure that shows paper numbers carries the citation in a footnote, plus the flags
  (inconsistencies in the sources) that concern the cells it shows;
- one colour per training stage (STAGE_COLORS) and per model (MODEL_COLORS), the same in every figure.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tulu_lab import reference

# ----------------------------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------------------------

STYLE: dict[str, object] = {
    "font.family": "DejaVu Sans",  # has ü, β, π, ‖
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.linestyle": ":",
    "grid.alpha": 0.6,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "hatch.linewidth": 0.6,
    "savefig.dpi": 150,
    "figure.dpi": 100,
}

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
STAGE_ORDER: tuple[str, ...] = ("base", "SFT", "DPO", "RLVR")
STAGE_COLORS: dict[str, str] = {"base": "#999999", "SFT": "#56B4E9", "DPO": "#009E73", "RLVR": "#D55E00"}

MODEL_COLORS: dict[str, str] = {
    "Tulu-3-405B": "#882255",
    "Tülu 3 405B": "#882255",
    "Tülu 3 70B": "#CC6677",
    "Tülu 3 8B": "#DDAA33",
    "Llama-3.1-405B-Instruct": "#0072B2",
    "Nous-Hermes-3-405B": "#AA4499",
    "DeepSeek-V3": "#E69F00",
    "GPT-4o-2024-11-20": "#444444",
}
# Measured series get their own colours, never one of the paper models'.
MEASURED_COLORS: tuple[str, ...] = ("#000000", "#117733", "#332288", "#44AA99")
QUANT_COLORS: dict[str, str] = {"bf16": "#0072B2", "fp16": "#0072B2", "int8": "#E69F00", "nf4": "#009E73",
                                "fp8": "#CC79A7", "fp4": "#56B4E9"}
ARM_COLORS: dict[str, str] = {"verifiable only": "#D55E00", "verifiable + RM": "#0072B2"}

DISPLAY_NAMES: dict[str, str] = {
    "Tulu-3-405B": "Tülu 3 405B",
    "Tulu-3-405B-DPO": "Tülu 3 405B DPO",
    "Tulu-3-405B-SFT": "Tülu 3 405B SFT",
    "Llama-3.1-405B-Instruct": "Llama 3.1 405B Instruct",
    "Nous-Hermes-3-405B": "Hermes 3 405B",
    "DeepSeek-V3": "DeepSeek V3",
    "GPT-4o-2024-11-20": "GPT-4o (2024-11-20)",
    "Avg_wo_safety": "Avg\nw/o safety",
    "Avg_w_safety": "Avg\nw/ safety",
    "BigBenchHard": "BBH",
    "AlpacaEval2": "AlpacaEval 2",
}

PAPER_PREFIX = "paper: "
MEASURED_PREFIX = "measured here: "
FOOTNOTE_FONTSIZE = 7
PAPER_CITATION = reference.SOURCES["P5"]

# Tülu 3 checkpoints named after a stage take that stage's colour (e.g. "Tulu-3-405B-DPO").
_STAGE_SUFFIX = re.compile(r"-(SFT|DPO)$")


@contextmanager
def style_context():
    """The house rcParams, for drawing outside the plot_* functions in the same look."""
    with matplotlib.rc_context(STYLE):
        yield


def _styled(plot_function):
    """Run a plot_* function inside the house style: artists take their look when they are created."""

    @functools.wraps(plot_function)
    def wrapper(*args, **kwargs):
        with style_context():
            return plot_function(*args, **kwargs)

    return wrapper


def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name, name)


def model_color(model: str, fallback_index: int = 0) -> str:
    """Colour of a model: its own, its stage's for "...-SFT"/"...-DPO" checkpoints, else a fallback."""
    if model in MODEL_COLORS:
        return MODEL_COLORS[model]
    stage = _STAGE_SUFFIX.search(model)
    if stage:
        return STAGE_COLORS[stage.group(1)]
    palette = ("#117733", "#332288", "#88CCEE", "#999933", "#661100", "#6699CC")
    return palette[fallback_index % len(palette)]


def paper_bar_style(color: str) -> dict:
    """Faded, hatched bar: how a number copied from the paper looks."""
    return {"facecolor": mcolors.to_rgba(color, 0.30), "edgecolor": mcolors.to_rgba(color, 1.0),
            "hatch": "////", "linewidth": 0.8}


def measured_bar_style(color: str) -> dict:
    return {"facecolor": color, "edgecolor": color, "linewidth": 0.8}


def paper_line_style(color: str) -> dict:
    """Dashed line with hollow markers: how a series copied from the paper looks."""
    return {"color": color, "linestyle": "--", "marker": "o", "markerfacecolor": "white",
            "markeredgecolor": color, "linewidth": 1.5, "alpha": 0.9}


def measured_line_style(color: str) -> dict:
    return {"color": color, "linestyle": "-", "marker": "o", "markerfacecolor": color,
            "markeredgecolor": color, "linewidth": 2.0}


# ----------------------------------------------------------------------------------------------
# Figure plumbing: creation, footnote, the plotted data, saving
# ----------------------------------------------------------------------------------------------

_DATA_ATTRIBUTE = "_tulu_lab_plotted_data"


def _new_figure(width: float, height: float) -> Figure:
    with style_context():
        return Figure(figsize=(width, height), layout="constrained")


def _add_footnote(fig: Figure, text: str) -> None:
    """Wrap ``text`` to the figure width and reserve room for it below the axes."""
    width_in, height_in = fig.get_size_inches()
    chars_per_line = int(width_in * 72 / (FOOTNOTE_FONTSIZE * 0.6))
    lines = [wrapped for paragraph in text.split("\n")
             for wrapped in (textwrap.wrap(paragraph, chars_per_line) or [""])]
    line_height_in = FOOTNOTE_FONTSIZE * 1.35 / 72
    reserved = min(0.45, (len(lines) * line_height_in + 0.14) / height_in)
    fig.get_layout_engine().set(rect=(0, reserved, 1, 1 - reserved))
    with style_context():
        fig.text(0.008, 0.01, "\n".join(lines), ha="left", va="bottom", fontsize=FOOTNOTE_FONTSIZE,
                 color="#333333", linespacing=1.25)


def _require_filled(df: pd.DataFrame, columns: Iterable[str], function: str, argument: str) -> None:
    """Grouping silently drops rows with empty keys: refuse them instead."""
    for column in columns:
        empty = df.index[df[column].isna()].tolist()
        if empty:
            raise ValueError(f"{function}: {argument} has empty {column!r} in rows {empty[:10]}")


def _figure_legend(fig: Figure, handles: Mapping[str, object], title: str) -> None:
    """One legend above all panels; its title is the figure's title (a suptitle would collide with it)."""
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside upper center",
               ncols=min(4, max(1, len(handles))), title=title,
               title_fontproperties={"weight": "bold", "size": 11})


def _attach_data(fig: Figure, data: pd.DataFrame) -> None:
    setattr(fig, _DATA_ATTRIBUTE, data.reset_index(drop=True))


def plotted_data(fig: Figure) -> pd.DataFrame:
    """The tidy frame a plot_* function drew (what save_fig writes as CSV by default)."""
    data = getattr(fig, _DATA_ATTRIBUTE, None)
    if data is None:
        raise ValueError("this figure was not made by a tulu_lab.plotting function; pass data= explicitly")
    return data.copy()


_FIGURE_NAME = re.compile(r"^\d{2}_[A-Za-z0-9_\-]+$")


def save_fig(
    fig: Figure,
    name: str,
    data: pd.DataFrame | None = None,
    figures_dir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write ``{figures_dir}/{name}.png`` and ``{figures_dir}/{name}.csv`` (the plotted data).

    ``name`` is "NN_words" (two-digit order, then a slug), e.g. "01_405b_comparison".
    ``data`` defaults to the frame the plot_* function drew. Returns (png_path, csv_path).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"save_fig: fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not _FIGURE_NAME.match(name):
        raise ValueError(f"save_fig: name {name!r} must look like 'NN_name' (two digits, underscore, slug)")
    if data is None:
        data = plotted_data(fig)
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"save_fig: data must be a pandas DataFrame, got {type(data).__name__}")
    if figures_dir is None:  # the project's figures/, wherever the caller runs from (notebooks/ or the root)
        from tulu_lab.paths import figures_dir as default_figures_dir
        figures_dir = default_figures_dir()
    directory = Path(figures_dir)
    directory.mkdir(parents=True, exist_ok=True)
    png_path, csv_path = directory / f"{name}.png", directory / f"{name}.csv"
    with style_context():
        fig.savefig(png_path, dpi=STYLE["savefig.dpi"], facecolor="white")
    data.to_csv(csv_path, index=False)
    return png_path, csv_path


def _require_columns(df: pd.DataFrame, columns: Iterable[str], function: str, argument: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{function}: {argument} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise ValueError(f"{function}: {argument} lacks columns {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{function}: {argument} has no rows")


# ----------------------------------------------------------------------------------------------
# 1. Tülu 3 405B vs the strongest models (Table 4)
# ----------------------------------------------------------------------------------------------

DEFAULT_405B_MODELS: tuple[str, ...] = (
    "Tulu-3-405B", "Llama-3.1-405B-Instruct", "Nous-Hermes-3-405B", "DeepSeek-V3", "GPT-4o-2024-11-20",
)


def table4_long() -> pd.DataFrame:
    """Table 4 in tidy form (benchmark, setting, model, value); see tulu_lab.reference.table4_long."""
    return reference.table4_long()


@_styled
def plot_405b_comparison(
    df: pd.DataFrame | None = None,
    models: Sequence[str] = DEFAULT_405B_MODELS,
    highlight: Sequence[str] = ("PopQA", "GSM8K"),
    focus: str = "Tulu-3-405B",
) -> Figure:
    """Grouped bars: Tülu 3 405B vs the other 405B-class models on every Table 4 benchmark.

    ``df``: tidy Table 4 (columns benchmark, setting, model, value), default ``table4_long()``.
    Benchmarks in ``highlight`` (the headline claim: Tülu 3 405B leads on PopQA and GSM8K) get a
    shaded band and the lead of ``focus`` over the best other model, computed from the data. An
    average row that disagrees with the mean of its printed cells is drawn as printed and starred.
    """
    function = "plot_405b_comparison"
    if df is None:
        df = table4_long()
    _require_columns(df, ["benchmark", "model", "value"], function, "df")
    unknown = [model for model in models if model not in set(df["model"])]
    if unknown:
        raise ValueError(f"{function}: models {unknown} not in df; it has {sorted(set(df['model']))}")
    if "setting" not in df.columns:
        df = df.assign(setting="")

    # Per-benchmark groups first, averages last (they summarise the rest).
    benchmarks = list(dict.fromkeys(df["benchmark"]))
    averages = [b for b in benchmarks if b.startswith("Avg")]
    benchmarks = [b for b in benchmarks if b not in averages] + averages
    wide = df.pivot_table(index="benchmark", columns="model", values="value", aggfunc="first")

    # Which printed averages disagree with their cells. Only checkable on the full table: an average
    # over a subset of its rows would be a different number.
    starred: dict[tuple[str, str], tuple[float, float]] = {}
    rules = reference.averaged_rows("main_405b")
    if set(wide.index) == set(reference.paper_table("main_405b")["benchmark"]):
        for item in reference.check_averages(wide, rules).itertuples():
            starred[(item.row, item.model)] = (item.printed, item.recomputed)

    fig = _new_figure(13.0, 5.6)
    ax = fig.add_subplot()
    n_models = len(models)
    width = 0.82 / n_models
    positions = np.arange(len(benchmarks), dtype=float)
    rows = []
    for index, model in enumerate(models):
        values = [float(wide.loc[b, model]) if b in wide.index else np.nan for b in benchmarks]
        offsets = positions - 0.41 + width * (index + 0.5)
        color = model_color(model, index)
        label = f"{PAPER_PREFIX}{display_name(model)}"
        ax.bar(offsets, values, width=width, label=label, **paper_bar_style(color))
        for benchmark, x, value in zip(benchmarks, offsets, values):
            if (benchmark, model) in starred:
                ax.text(x, value + 0.6, "*", ha="center", va="bottom", fontsize=12, fontweight="bold")
            if benchmark in highlight and not np.isnan(value):
                ax.text(x, value - 1.0, f"{value:.1f}", ha="center", va="top", rotation=90, fontsize=7)
            setting = df.loc[(df["benchmark"] == benchmark) & (df["model"] == model), "setting"]
            rows.append({"series": "paper", "benchmark": benchmark,
                         "setting": setting.iloc[0] if len(setting) else "",
                         "model": model, "value": value,
                         "flagged_average": (benchmark, model) in starred})

    # Highlighted benchmarks: band plus the focus model's lead, from the numbers themselves.
    for benchmark in highlight:
        if benchmark not in benchmarks or focus not in wide.columns:
            continue
        x = positions[benchmarks.index(benchmark)]
        ax.axvspan(x - 0.47, x + 0.47, color="#F0E442", alpha=0.25, zorder=0, linewidth=0)
        others = wide.loc[benchmark, [m for m in models if m != focus]]
        lead = float(wide.loc[benchmark, focus]) - float(others.max())
        verdict = f"leads by {lead:.1f}" if lead > 0 else f"trails by {-lead:.1f}" if lead < 0 else "ties"
        ax.text(x, 101.5, f"{display_name(focus)}\n{verdict}", ha="center", va="bottom",
                fontsize=7.5, fontweight="bold")

    settings = df.drop_duplicates("benchmark").set_index("benchmark")["setting"].fillna("")
    labels = [f"{display_name(b)}\n{settings.get(b, '')}" if not b.startswith("Avg") else display_name(b)
              for b in benchmarks]
    ax.set_xticks(positions, labels)
    for tick, benchmark in zip(ax.get_xticklabels(), benchmarks):
        if benchmark in highlight:
            tick.set_fontweight("bold")
    if averages:
        ax.axvline(positions[len(benchmarks) - len(averages)] - 0.5, color="#666666", linewidth=0.8)
    ax.set_xlim(-0.55, len(benchmarks) - 0.45)
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("score (0-100; metric per benchmark)")
    ax.set_title("Tülu 3 405B vs other 405B-class and frontier models (Tülu 3 Table 4)")
    fig.legend(loc="outside upper center", ncols=n_models)

    footnote = [f"Paper numbers (hatched): {df.attrs.get('source', reference.citation('main_405b'))}."]
    for (row, model), (printed, recomputed) in starred.items():
        footnote.append(f"* {display_name(model)} \"{display_name(row).replace(chr(10), ' ')}\" drawn as printed "
                        f"({printed:.1f}); its printed cells average {recomputed:.1f}.")
    if "GPT-4o-2024-11-20" in models:
        footnote.append(f"Flag 6. {reference.FLAGS[6]}")
    _add_footnote(fig, "\n".join(footnote))
    _attach_data(fig, pd.DataFrame(rows))
    return fig


# ----------------------------------------------------------------------------------------------
# 2. SFT -> DPO -> RLVR, paper (8B / 70B / 405B) beside the stages measured here
# ----------------------------------------------------------------------------------------------


# Other spellings of the paper's benchmark names, after lower-casing and dropping punctuation.
_BENCHMARK_ALIASES: dict[str, str] = {"bbh": "bigbenchhard", "humanevalplus": "humaneval+",
                                      "alpacaeval": "alpacaeval2", "truthfulqamc2": "truthfulqa"}


def _benchmark_key(name: str) -> str:
    """Match "gsm8k", "GSM8K" and "GSM-8K", "bbh" and "BigBenchHard"; "+" kept so HumanEval+ stays apart."""
    key = re.sub(r"[^a-z0-9+]", "", str(name).lower())
    return _BENCHMARK_ALIASES.get(key, key)


def _normalise_stage(stage: str, function: str) -> str:
    lookup = {s.lower(): s for s in STAGE_ORDER}
    key = str(stage).strip().lower()
    if key not in lookup:
        raise ValueError(f"{function}: unknown stage {stage!r}; expected one of {list(STAGE_ORDER)}")
    return lookup[key]


def _to_percent(values: pd.Series, unit: str, function: str) -> tuple[pd.Series, bool]:
    """Measured scores as 0-100 like the paper. Returns (values, were_fractions)."""
    if unit not in ("auto", "fraction", "percent"):
        raise ValueError(f"{function}: measured_unit must be 'auto', 'fraction' or 'percent', got {unit!r}")
    fractions = unit == "fraction" or (unit == "auto" and values.between(0, 1).all())
    return (values * 100.0 if fractions else values), fractions


@_styled
def plot_stage_progression(
    paper_df: pd.DataFrame | None,
    measured_df: pd.DataFrame | None = None,
    *,
    metrics: Mapping[str, str] | None = None,
    measured_unit: str = "auto",
    measured_settings: str | None = None,
    benchmarks: Sequence[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """Score per benchmark across training stages: the paper's Tülu 3 scales beside measured runs.

    ``paper_df``: tidy, columns model, stage, benchmark, value (optional setting, version), e.g.
    ``tulu_lab.reference.tulu3_stage_scores("v5")``. Rows of more than one ``version`` are refused:
    v1 and v5 numbers never share a plot. Average rows ("Avg...") are dropped.
    ``measured_df``: what the evaluation module returns, columns model, stage, benchmark, metric,
    value (optional n, stderr). One metric per benchmark: pick with ``metrics={"gsm8k": "flex"}``
    when a benchmark has several. ``measured_unit``: "fraction" (0-1, shown x100), "percent", or
    "auto" (fractions when every value lies in [0, 1]). Either frame may be None, not both.
    """
    function = "plot_stage_progression"
    if paper_df is None and measured_df is None:
        raise ValueError(f"{function}: give paper_df, measured_df or both")

    series = []  # rows of the plotted data, both kinds
    version = None
    if paper_df is not None:
        _require_columns(paper_df, ["model", "stage", "benchmark", "value"], function, "paper_df")
        if "version" in paper_df.columns and paper_df["version"].nunique() > 1:
            raise ValueError(f"{function}: paper_df mixes versions {sorted(paper_df['version'].unique())}; "
                             "v1 and v5 numbers must not share a plot")
        paper = paper_df[~paper_df["benchmark"].astype(str).str.startswith("Avg")].copy()
        paper["stage"] = [_normalise_stage(s, function) for s in paper["stage"]]
        if "setting" not in paper.columns:
            paper["setting"] = ""
        version = paper["version"].iloc[0] if "version" in paper.columns else None
        for row in paper.itertuples():
            series.append({"series": "paper", "model": row.model, "stage": row.stage,
                           "benchmark": row.benchmark, "key": _benchmark_key(row.benchmark),
                           "setting": row.setting, "metric": "", "value": float(row.value),
                           "stderr": np.nan, "n": np.nan, "version": version})

    converted = False
    if measured_df is not None:
        _require_columns(measured_df, ["model", "stage", "benchmark", "metric", "value"], function, "measured_df")
        measured = measured_df.copy()
        measured["key"] = measured["benchmark"].map(_benchmark_key)
        if metrics is not None:
            wanted = {_benchmark_key(b): m for b, m in metrics.items()}
            keep = [wanted.get(key) in (None, metric) for key, metric in zip(measured["key"], measured["metric"])]
            measured = measured[keep]
        counts = measured.groupby(["model", "stage", "key"])["metric"].nunique()
        ambiguous = counts[counts > 1]
        if not ambiguous.empty:
            examples = {key: sorted(measured.loc[measured["key"] == key, "metric"].unique())
                        for key in ambiguous.index.get_level_values("key").unique()}
            raise ValueError(f"{function}: several metrics per benchmark in measured_df {examples}; "
                             "choose one each with metrics={benchmark: metric}")
        measured["stage"] = [_normalise_stage(s, function) for s in measured["stage"]]
        measured["value"], converted = _to_percent(measured["value"].astype(float), measured_unit, function)
        if "stderr" in measured.columns:
            stderr = measured["stderr"].astype(float)
        else:
            stderr = pd.Series(np.nan, index=measured.index)
        measured["stderr"] = stderr * (100.0 if converted else 1.0)
        if "n" not in measured.columns:
            measured["n"] = np.nan
        for row in measured.itertuples():
            series.append({"series": "measured here", "model": row.model, "stage": row.stage,
                           "benchmark": row.benchmark, "key": row.key, "setting": "",
                           "metric": row.metric, "value": float(row.value), "stderr": float(row.stderr),
                           "n": row.n, "version": None})
    data = pd.DataFrame(series)

    # Panels: the paper's benchmarks in table order, then measured-only ones; names from the paper.
    names = {}
    for row in data.itertuples():
        names.setdefault(row.key, row.benchmark)
    keys = list(names)
    if benchmarks is not None:
        keys = [_benchmark_key(b) for b in benchmarks]
        unknown = [b for b, k in zip(benchmarks, keys) if k not in names]
        if unknown:
            raise ValueError(f"{function}: benchmarks {unknown} not in the data; it has {list(names.values())}")
        data = data[data["key"].isin(keys)]
    stages = [s for s in STAGE_ORDER if s in set(data["stage"])]
    x_of = {stage: i for i, stage in enumerate(stages)}

    ncols = max(1, min(ncols, len(keys)))
    nrows = int(np.ceil(len(keys) / ncols))
    fig = _new_figure(3.2 * ncols, 2.5 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    paper_models = list(dict.fromkeys(data.loc[data["series"] == "paper", "model"]))
    measured_models = list(dict.fromkeys(data.loc[data["series"] == "measured here", "model"]))
    handles: dict[str, Line2D] = {}
    for panel, key in enumerate(keys):
        ax = axes[panel // ncols][panel % ncols]
        part = data[data["key"] == key]
        measured_notes: list[str] = []
        for index, model in enumerate(paper_models):
            line = part[(part["series"] == "paper") & (part["model"] == model)].sort_values(
                "stage", key=lambda s: s.map(x_of))
            if line.empty:
                continue
            style = paper_line_style(model_color(model, index))
            (artist,) = ax.plot(line["stage"].map(x_of), line["value"], **style)
            label = f"{PAPER_PREFIX}{model}" + (f" ({version})" if version else "")
            handles.setdefault(label, artist)
        for index, model in enumerate(measured_models):
            line = part[(part["series"] == "measured here") & (part["model"] == model)].sort_values(
                "stage", key=lambda s: s.map(x_of))
            if line.empty:
                continue
            color = MEASURED_COLORS[index % len(MEASURED_COLORS)]
            style = measured_line_style(color)
            (artist,) = ax.plot(line["stage"].map(x_of), line["value"], **style)
            if line["stderr"].notna().any():
                ax.errorbar(line["stage"].map(x_of), line["value"], yerr=line["stderr"], fmt="none",
                            ecolor=color, elinewidth=1, capsize=2)
            label = f"{MEASURED_PREFIX}{model}" + (f", {measured_settings}" if measured_settings else "")
            handles.setdefault(label, artist)
            details = [str(m) for m in line["metric"].unique() if m]
            ns = sorted({int(n) for n in line["n"] if pd.notna(n)})
            if ns:
                details.append("n=" + "/".join(str(n) for n in ns))
            measured_notes.append(", ".join(details))
        if measured_notes:  # below the axis, where it cannot cover a line
            ax.set_xlabel("measured: " + "; ".join(dict.fromkeys(measured_notes)), fontsize=7)
        settings = _settings_by_model(part[part["series"] == "paper"])
        ax.set_title(display_name(names[key]) + (f"\n{settings}" if settings else ""), fontsize=9)
        ax.set_xticks(range(len(stages)), stages)
        for tick, stage in zip(ax.get_xticklabels(), stages):
            tick.set_color(STAGE_COLORS[stage])
            tick.set_fontweight("bold")
        ax.set_xlim(-0.3, len(stages) - 0.7)
        if panel % ncols == 0:
            ax.set_ylabel("score (0-100)")
    for panel in range(len(keys), nrows * ncols):
        axes[panel // ncols][panel % ncols].set_visible(False)
    _figure_legend(fig, handles, "Tülu 3 stages: SFT → DPO → RLVR")

    footnote = []
    if paper_models:
        source = paper_df.attrs.get("source", PAPER_CITATION)
        footnote.append(f"Paper series (dashed, hollow markers): {source}. Averages omitted: they cover "
                        "different task sets at different scales; settings per scale in panel titles.")
    if measured_models:
        has_stderr = data.loc[data["series"] == "measured here", "stderr"].notna().any()
        footnote.append("Measured series (solid) come from this workbench"
                        + ("; values given as fractions, shown x100" if converted else "")
                        + ("; error bars: ±1 standard error" if has_stderr else "") + ".")
    _add_footnote(fig, "\n".join(footnote))
    _attach_data(fig, data.drop(columns=["key"]))
    return fig


def _settings_by_model(paper_rows: pd.DataFrame) -> str:
    """"8-shot CoT", or "15-shot (8B, 70B)" and "3-shot (405B)" on two lines when the scales differ."""
    if paper_rows.empty:
        return ""
    by_setting = paper_rows.groupby("setting", sort=False)["model"].unique()
    if len(by_setting) == 1:
        return by_setting.index[0]
    parts = []
    for setting, models in by_setting.items():
        scales = [m.replace("Tülu 3 ", "") for m in models]
        parts.append(f"{setting} ({', '.join(scales)})")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# 3. RLVR training curves over a beta sweep (layout of the paper's Figure 19)
# ----------------------------------------------------------------------------------------------

METRIC_LABELS: dict[str, str] = {
    "reward": "verifiable reward",
    "reward_std": "reward std",
    "kl": "KL(π ‖ π_ref)",
    "entropy": "entropy",
    "completions/mean_length": "response length (tokens)",
}


def _beta_colors(betas: Sequence[float]) -> dict[float, tuple]:
    colormap = matplotlib.colormaps["viridis"]
    positions = np.linspace(0.0, 0.85, max(len(betas), 2))
    return {beta: colormap(positions[i]) for i, beta in enumerate(sorted(betas))}


@_styled
def plot_rlvr_curves(
    metrics_df: pd.DataFrame,
    metrics: Sequence[str] = ("reward", "kl", "completions/mean_length"),
    *,
    x: str = "auto",
    model: str | None = None,
    settings: str | None = None,
) -> Figure:
    """Training curves of RLVR runs, one line per KL coefficient beta (mean over seeds, min-max band).

    ``metrics_df``: one row per logged step, columns beta, step, the ``metrics`` (TRL names: reward,
    reward_std, kl, entropy, completions/mean_length), optional seed, episodes, task (one row of
    panels per task, as Figure 19 has one per GSM8K / MATH / IF) and model.
    ``x``: "episodes", "step" or "auto" (episodes when logged, else step).
    """
    function = "plot_rlvr_curves"
    _require_columns(metrics_df, ["beta", "step", *metrics], function, "metrics_df")
    _require_filled(metrics_df, ["beta", "step"], function, "metrics_df")
    if x == "auto":
        x = "episodes" if "episodes" in metrics_df.columns and metrics_df["episodes"].notna().all() else "step"
    if x not in metrics_df.columns:
        raise ValueError(f"{function}: x={x!r} is not a column of metrics_df ({list(metrics_df.columns)})")
    df = metrics_df.copy()
    if "seed" not in df.columns:
        df["seed"] = 0
    if "task" not in df.columns:
        df["task"] = ""
    if model is None and "model" in df.columns:
        model = ", ".join(str(m) for m in df["model"].unique())

    long = df.melt(id_vars=["task", "beta", "seed", x], value_vars=list(metrics), var_name="metric")
    summary = (long.groupby(["task", "beta", "metric", x], sort=True)["value"]
               .agg(mean="mean", low="min", high="max", n_seeds="count").reset_index())

    tasks = list(dict.fromkeys(df["task"]))
    betas = sorted(df["beta"].unique())
    colors = _beta_colors(betas)
    seeds_per_beta = df.groupby("beta")["seed"].nunique()
    fig = _new_figure(4.0 * len(metrics), 2.8 * len(tasks) + 0.9)
    axes = fig.subplots(len(tasks), len(metrics), squeeze=False)
    handles: dict[str, Line2D] = {}
    for r, task in enumerate(tasks):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for beta in betas:
                part = summary[(summary["task"] == task) & (summary["beta"] == beta)
                               & (summary["metric"] == metric)]
                if part.empty:
                    continue
                (artist,) = ax.plot(part[x], part["mean"], color=colors[beta], linestyle="-", linewidth=1.8)
                if (part["n_seeds"] > 1).any():
                    ax.fill_between(part[x], part["low"], part["high"], color=colors[beta], alpha=0.18,
                                    linewidth=0)
                handles.setdefault(f"{MEASURED_PREFIX}β={beta:g}", artist)
            ax.set_title((f"{task}: " if task else "") + METRIC_LABELS.get(metric, metric), fontsize=9)
            ax.set_xlabel(x)
            ax.grid(True, axis="both")
            if x == "episodes":
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    details = ", ".join(part for part in (model, settings) if part)
    seeds = sorted(set(seeds_per_beta))
    seeds_note = f"mean of {'/'.join(map(str, seeds))} seeds, band min-max" if seeds != [1] else "1 seed"
    _figure_legend(fig, handles, "RLVR training curves over the KL coefficient β"
                   + (f": {details}" if details else "") + f" ({seeds_note})")
    _add_footnote(fig, "Measured here. Layout after Tülu 3 Figure 19 "
                       f"({PAPER_CITATION}); the paper publishes no values for these curves, "
                       "so no paper series is drawn.")
    _attach_data(fig, summary.rename(columns={x: "x"}).assign(x_name=x))
    return fig


def _thousands(value: float, _position: int) -> str:
    return f"{value / 1000:g}K" if abs(value) >= 1000 else f"{value:g}"


# ----------------------------------------------------------------------------------------------
# 4. Over-optimisation: held-out score vs KL across the beta sweep (Figures 21/22)
# ----------------------------------------------------------------------------------------------


@_styled
def plot_overoptimization(
    df: pd.DataFrame,
    *,
    baseline: Mapping[str, float] | None = None,
    kl_scale: str = "linear",
    model: str | None = None,
    settings: str | None = None,
) -> Figure:
    """Held-out score against final KL, one point per beta, one line per reward arm.

    ``df``: columns beta, kl, benchmark, value, optional arm ("verifiable only" / "verifiable + RM")
    and seed (points are seed means). One panel per benchmark (e.g. "GSM8K test", "average").
    ``baseline``: score of the starting checkpoint per benchmark, drawn as a dotted line.
    ``kl_scale``: "linear" or "log" (a beta sweep over decades crowds the small-KL end on linear).
    """
    function = "plot_overoptimization"
    _require_columns(df, ["beta", "kl", "benchmark", "value"], function, "df")
    _require_filled(df, ["beta", "kl", "benchmark"], function, "df")
    if kl_scale not in ("linear", "log"):
        raise ValueError(f"{function}: kl_scale must be 'linear' or 'log', got {kl_scale!r}")
    if kl_scale == "log" and (df["kl"] <= 0).any():
        raise ValueError(f"{function}: kl_scale='log' needs positive KL; rows {df.index[df['kl'] <= 0].tolist()}")
    data = df.copy()
    if "arm" not in data.columns:
        data["arm"] = "verifiable only"
    points = (data.groupby(["benchmark", "arm", "beta"], sort=False)
              .agg(kl=("kl", "mean"), value=("value", "mean"), n_seeds=("value", "count")).reset_index())
    benchmarks = list(dict.fromkeys(points["benchmark"]))
    arms = list(dict.fromkeys(points["arm"]))

    fig = _new_figure(max(7.5, 4.6 * len(benchmarks)), 4.2)  # wide enough for the title on one panel
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    handles: dict[str, Line2D] = {}
    for ax, benchmark in zip(axes, benchmarks):
        for index, arm in enumerate(arms):
            part = points[(points["benchmark"] == benchmark) & (points["arm"] == arm)].sort_values("kl")
            if part.empty:
                continue
            color = ARM_COLORS.get(arm, MEASURED_COLORS[index % len(MEASURED_COLORS)])
            (artist,) = ax.plot(part["kl"], part["value"], **measured_line_style(color))
            handles.setdefault(f"{MEASURED_PREFIX}{arm}", artist)
            for row in part.itertuples():
                # alternate arms above-left / below-right of their points, clear of the rising lines
                above = index % 2 == 0
                ax.annotate(f"β={row.beta:g}", (row.kl, row.value), textcoords="offset points",
                            xytext=(-5, 6) if above else (6, -12), ha="right" if above else "left",
                            fontsize=6.5, color=color)
        if baseline and benchmark in baseline:
            artist = ax.axhline(baseline[benchmark], color="#666666", linestyle=":", linewidth=1.2)
            handles.setdefault("starting checkpoint", artist)
        ax.set_title(benchmark, fontsize=9)
        ax.set_xscale(kl_scale)
        ax.margins(x=0.12)  # room for the beta labels beside the outermost points
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("KL(π ‖ π_ref) at the end of training" + (" (log scale)" if kl_scale == "log" else ""))
        ax.grid(True, axis="both")
    axes[0].set_ylabel("held-out score")
    details = ", ".join(part for part in (model, settings) if part)
    _figure_legend(fig, handles, "Over-optimisation: held-out score vs KL" + (f": {details}" if details else ""))
    _add_footnote(fig, "Measured here; points are means over seeds. Layout after Tülu 3 Figures 21/22 "
                       f"({PAPER_CITATION}), which report shapes only (no values drawn from them).")
    _attach_data(fig, points)
    return fig


# ----------------------------------------------------------------------------------------------
# 5. The 405B MATH RLVR run (Figure 25): only the numbers the paper states
# ----------------------------------------------------------------------------------------------


def _hparam(hparams: pd.DataFrame, stage: str, scale: str, param: str) -> str:
    row = hparams[(hparams["stage"] == stage) & (hparams["scale"] == scale) & (hparams["param"] == param)]
    if len(row) != 1:
        raise KeyError(f"hparams has {len(row)} rows for {stage}/{scale}/{param}, expected 1")
    return row["value"].iloc[0]


def fig25_points(figures: Mapping | None = None, hparams: pd.DataFrame | None = None) -> pd.DataFrame:
    """The published endpoints of the 405B RLVR run: DPO start (step 0) and released model (last step).

    Columns series, label, step, episodes, value, source. Steps and batch come from the hparams table,
    scores from figures.json (which repeats the Table 4 MATH cells).
    """
    figures = reference.paper_figures() if figures is None else figures
    hparams = reference.paper_table("hparams") if hparams is None else hparams
    endpoints = figures["fig25_405b_rlvr"]["endpoints_from_tables"]["MATH_4shot_flex"]
    steps = int(_hparam(hparams, "RLVR", "405B", "training_steps"))
    batch = int(_hparam(hparams, "RLVR", "405B", "effective_batch"))
    return pd.DataFrame([
        {"series": "paper", "label": "Tülu 3 405B DPO (RLVR start)", "step": 0, "episodes": 0,
         "value": float(endpoints["405B_DPO"]), "source": "Table 4, MATH 4-shot flex"},
        {"series": "paper", "label": "Tülu 3 405B (released, last RLVR checkpoint)", "step": steps,
         "episodes": steps * batch, "value": float(endpoints["405B_RLVR"]), "source": "Table 4, MATH 4-shot flex"},
    ])


@_styled
def plot_405b_math_rlvr(
    figures: Mapping | None = None,
    hparams: pd.DataFrame | None = None,
    measured_df: pd.DataFrame | None = None,
    *,
    measured_label: str | None = None,
) -> Figure:
    """The 405B RLVR run on MATH as published: start and end scores, nothing in between.

    The paper's Figure 25 shows curves whose values are not published as numbers, so this draws
    only the two Table 4 endpoints (MATH 4-shot flex of the DPO start and of the released model) at
    step 0 and at the last step, with the finding stated in the text. ``measured_df`` (columns step,
    value, optional metric) adds a separate panel for a run measured here; its scale is its own.
    """
    function = "plot_405b_math_rlvr"
    points = fig25_points(figures, hparams)
    figures = reference.paper_figures() if figures is None else figures
    start, end = points.iloc[0], points.iloc[1]
    batch = end["episodes"] / end["step"]

    fig = _new_figure(11.5 if measured_df is not None else 7.5, 4.6)
    axes = fig.subplots(1, 2 if measured_df is not None else 1, squeeze=False)[0]
    ax = axes[0]
    color = MODEL_COLORS["Tülu 3 405B"]
    style = paper_line_style(color) | {"linestyle": "none", "markersize": 9, "markeredgewidth": 2}
    ax.plot([start["step"]], [start["value"]], label=f"{PAPER_PREFIX}{start['label']}",
            **(style | {"marker": "s"}))
    ax.plot([end["step"]], [end["value"]], label=f"{PAPER_PREFIX}{end['label']}",
            **(style | {"marker": "*", "markersize": 14}))
    # The change is shown as a bracket at the last step, not as a path: the path is unpublished.
    ax.hlines(start["value"], start["step"], end["step"], colors="#999999", linestyles=":", linewidth=1)
    ax.annotate("", xy=(end["step"], end["value"]), xytext=(end["step"], start["value"]),
                arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.5})
    ax.text(end["step"] - 1.5, (start["value"] + end["value"]) / 2,
            f"+{end['value'] - start['value']:.1f} points\nafter {int(end['step'])} steps",
            ha="right", va="center", fontsize=8.5, color=color, fontweight="bold")
    for row, offset in ((start, (8, -4)), (end, (-10, 8))):
        ax.annotate(f"{row['value']:.1f}", (row["step"], row["value"]), textcoords="offset points",
                    xytext=offset, ha="left" if offset[0] > 0 else "right", fontsize=8.5)
    ax.text(0.02, 0.97, "Curve values of Fig. 25 are not published;\nonly the Table 4 endpoints are drawn.",
            transform=ax.transAxes, va="top", fontsize=7.5, style="italic", color="#555555")
    ax.set_xlim(-5, end["step"] + 8)
    ax.set_ylim(min(start["value"], end["value"]) - 4, max(start["value"], end["value"]) + 4)
    ax.set_xlabel("RLVR step")
    ax.set_ylabel("MATH 4-shot flex (%)")
    ax.set_title("Tülu 3 405B RLVR on MATH (paper)", fontsize=9.5)
    episodes = ax.secondary_xaxis("top", functions=(lambda s: s * batch, lambda e: e / batch))
    episodes.set_xlabel(f"episodes (step x {int(batch)} prompts)", fontsize=8)
    episodes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    ax.legend(loc="lower right")

    data = points
    if measured_df is not None:
        _require_columns(measured_df, ["step", "value"], function, "measured_df")
        measured = measured_df.sort_values("step")
        panel = axes[1]
        label = MEASURED_PREFIX + (measured_label or "MATH RLVR run")
        panel.plot(measured["step"], measured["value"], label=label, **measured_line_style(MEASURED_COLORS[0]))
        metric = measured["metric"].iloc[0] if "metric" in measured.columns else "score"
        panel.set_xlabel("RLVR step")
        panel.set_ylabel(str(metric))
        panel.set_title("Measured here (own scale)", fontsize=9.5)
        panel.legend(loc="lower right")
        data = pd.concat([points, measured.assign(series="measured here", label=label)], ignore_index=True)
    fig.suptitle(f"Scaling RLVR to 405B: MATH before and after {int(end['step'])} steps", fontweight="bold")

    text = figures["fig25_405b_rlvr"].get("text", "")
    _add_footnote(fig, f"Paper numbers (hollow markers): {reference.citation('main_405b')}; Figure 25 of "
                       f"the same paper = figure in {reference.SOURCES['BLOG']}. Stated there: {text}.\n"
                       f"Flag 3. {reference.FLAGS[3]}")
    _attach_data(fig, data)
    return fig


# ----------------------------------------------------------------------------------------------
# 6. Memory plan: weights + KV cache per model and quantisation against GPU capacities
# ----------------------------------------------------------------------------------------------

QUANT_ORDER: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "nf4", "fp4")
DEFAULT_GPU_CAPACITIES_GB: dict[str, float] = {"24 GB": 24, "48 GB": 48, "80 GB": 80, "141 GB (H200)": 141}


def _size_order(model: str) -> float:
    """Sort "8B" < "70B" < "405B" by the number before B; unknown names keep their order at the end."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*[Bb]\b", str(model))
    return float(match.group(1)) if match else float("inf")


MEMORY_COMPONENTS: tuple[str, ...] = ("weights_gb", "kv_gb", "activations_gb")


def _memory_segment_style(segment: str, color: str) -> dict:
    """Weights solid in the quantisation's colour; what comes on top of them hollow with a pattern."""
    hatches = {"kv_gb": "....", "activations_gb": "xxx", "other_gb": "---"}
    if segment in hatches:
        return {"facecolor": "white", "edgecolor": color, "hatch": hatches[segment], "linewidth": 0.8}
    return measured_bar_style(color)


@_styled
def plot_memory_plan(
    df: pd.DataFrame,
    *,
    capacities_gb: Mapping[str, float] = DEFAULT_GPU_CAPACITIES_GB,
    gpu_counts: Sequence[int] = (2, 4, 8),
    multiples_for: Sequence[float] = (80, 141),
    title: str | None = None,
) -> Figure:
    """Memory per model x quantisation (stacked components) against GPU capacities.

    ``df``: columns model, quant and, in GB (1e9 bytes), any of the components weights_gb, kv_gb,
    activations_gb (stacked in that order) and/or total_gb; one row per (model, quant) — the shape of
    ``tulu_lab.memory.memory_grid()``. When total_gb exceeds the components' sum the rest is drawn as
    "other". Horizontal lines mark each capacity in ``capacities_gb``, and ``gpu_counts`` multiples of
    the capacities listed in ``multiples_for``. Log scale.
    """
    function = "plot_memory_plan"
    _require_columns(df, ["model", "quant"], function, "df")
    components = [column for column in MEMORY_COMPONENTS if column in df.columns]
    if not components and "total_gb" not in df.columns:
        raise ValueError(f"{function}: df needs some of {list(MEMORY_COMPONENTS)} or total_gb; "
                         f"it has {list(df.columns)}")
    data = df.copy()
    if not components:  # totals only: one solid bar each
        data["total_gb"] = data["total_gb"].astype(float)
        segments = ["total_gb"]
    else:
        for column in components:
            data[column] = data[column].astype(float).fillna(0.0)
        component_sum = data[components].sum(axis=1)
        if "total_gb" in data.columns:
            data["total_gb"] = data["total_gb"].astype(float)
            short = data["total_gb"] < component_sum * 0.995
            if short.any():
                raise ValueError(f"{function}: total_gb is below the sum of {components} in rows "
                                 f"{data.index[short].tolist()}")
            gap = data["total_gb"] - component_sum
            data["other_gb"] = gap.where(gap > data["total_gb"] * 0.005, 0.0)
        else:
            data["total_gb"] = component_sum
            data["other_gb"] = 0.0
        segments = components + ["other_gb"]
    duplicated = data.duplicated(["model", "quant"])
    if duplicated.any():
        raise ValueError(f"{function}: more than one row for (model, quant) "
                         f"{data.loc[duplicated, ['model', 'quant']].values.tolist()}")
    if (data["total_gb"] <= 0).any():
        raise ValueError(f"{function}: memory must be positive; rows {data.index[data['total_gb'] <= 0].tolist()}")

    models = sorted(dict.fromkeys(data["model"]), key=_size_order)
    quants = sorted(dict.fromkeys(data["quant"]),
                    key=lambda q: QUANT_ORDER.index(q) if q in QUANT_ORDER else len(QUANT_ORDER))
    fig = _new_figure(9.5, 5.8)
    ax = fig.add_subplot()
    width = 0.8 / len(quants)
    rows = []
    for position, model in enumerate(models):
        for index, quant in enumerate(quants):
            color = QUANT_COLORS.get(quant, MEASURED_COLORS[index % len(MEASURED_COLORS)])
            row = data[(data["model"] == model) & (data["quant"] == quant)]
            if row.empty:
                continue
            row = row.iloc[0]
            x = position - 0.4 + width * (index + 0.5)
            bottom = 0.0
            for segment in segments:
                height = row[segment]
                if height <= 0:
                    continue
                ax.bar(x, height, width=width, bottom=bottom, **_memory_segment_style(segment, color))
                bottom += height
            ax.text(x, row["total_gb"] * 1.06, f"{row['total_gb']:.0f}" if row["total_gb"] >= 10
                    else f"{row['total_gb']:.1f}", ha="center", va="bottom", fontsize=7)
            rows.append({"model": model, "quant": quant, **{segment: row[segment] for segment in segments},
                         "total_gb": row["total_gb"]})

    # Capacity lines: singles labelled at the left margin, multiples of the big GPUs at the right.
    lines = [(name, capacity, 1) for name, capacity in capacities_gb.items()]
    for name, capacity in capacities_gb.items():
        if capacity in multiples_for:
            lines += [(name, capacity * count, count) for count in gpu_counts]
    line_colors = {capacity: color for capacity, color in
                   zip(capacities_gb.values(), ("#999999", "#777777", "#0072B2", "#CC79A7", "#117733"))}
    transform = matplotlib.transforms.blended_transform_factory(ax.transAxes, ax.transData)
    for name, gb, count in lines:
        base = gb / count
        color = line_colors.get(base, "#555555")
        # drawn over the bars: whether a bar ends below a line is the point of the figure
        ax.axhline(gb, color=color, linewidth=0.9, linestyle="-" if count == 1 else "--", alpha=0.9, zorder=3)
        label = name if count == 1 else f"{count}x {base:g} GB = {gb:g} GB"
        right = (count > 1 and base == max(multiples_for)) or (count == 1 and base == max(capacities_gb.values()))
        ax.text(0.995 if right else 0.005, gb, label, transform=transform, ha="right" if right else "left",
                va="bottom", fontsize=6.5, color=color)
    ax.set_yscale("log")
    highest = max(data["total_gb"].max(), max(gb for _, gb, _ in lines))
    ax.set_ylim(min(data["total_gb"].min(), min(capacities_gb.values())) / 1.8, highest * 1.6)
    ax.set_xticks(range(len(models)), models)
    ax.set_xlim(-1.0, len(models))
    ax.set_ylabel("GB (log scale)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    label_of = {"weights_gb": "weights", "kv_gb": "KV cache", "activations_gb": "activations",
                "other_gb": "other", "total_gb": "total"}
    first = segments[0]
    handles = [Patch(**_memory_segment_style(first, QUANT_COLORS.get(q, MEASURED_COLORS[i % len(MEASURED_COLORS)])),
                     label=f"{label_of[first]}, {q}") for i, q in enumerate(quants)]
    for segment in segments[1:]:
        if (data[segment] > 0).any():
            handles.append(Patch(**_memory_segment_style(segment, "#333333"), label=label_of[segment]))
    handles += [Line2D([], [], color="#555555", linewidth=0.9, label="1 GPU"),
                Line2D([], [], color="#555555", linewidth=0.9, linestyle="--", label="several GPUs")]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    ax.set_title(title or "Memory needed vs GPU memory", fontsize=10)
    drawn = ", ".join(label_of[segment] for segment in segments if (data[segment] > 0).any())
    _add_footnote(fig, f"Computed by the memory planner, not paper numbers: {drawn}. Lines: GPU memory x number "
                       "of GPUs, assuming a perfect split and no framework overhead; a configuration can fit when "
                       "its bar ends below a line.")
    _attach_data(fig, pd.DataFrame(rows))
    return fig


__all__ = [
    "ARM_COLORS", "DISPLAY_NAMES", "MEASURED_COLORS", "MODEL_COLORS", "QUANT_COLORS", "STAGE_COLORS",
    "STAGE_ORDER", "STYLE", "fig25_points", "model_color", "plot_405b_comparison", "plot_405b_math_rlvr",
    "plot_memory_plan", "plot_overoptimization", "plot_rlvr_curves", "plot_stage_progression",
    "MEMORY_COMPONENTS", "plotted_data", "save_fig", "style_context", "table4_long",
]


# ----------------------------------------------------------------------------------------------
# Runs side by side (tulu_lab.ledger.compare)
# ----------------------------------------------------------------------------------------------

COMPARE_METRICS = {
    "sft": ("loss", "learning_rate"),
    "dpo": ("loss", "rewards/margins", "rewards/accuracies"),
    "rlvr": ("reward", "kl", "completions/mean_length"),
}


def compare_curves(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of a ``ledger.compare(..., per="step")`` table a comparison figure draws.

    ``metrics`` default: the stage's usual curves (COMPARE_METRICS) the runs logged, else every metric
    they logged. Rows without a value are dropped; the order is run (as given), metric, step.
    """
    function = "compare_curves"
    _require_columns(table, ["run", "stage", "step", "metric", "value"], function, "table")
    if metrics is None:
        stages = list(dict.fromkeys(table["stage"]))
        usual = [m for s in stages for m in COMPARE_METRICS.get(s, ()) if m in set(table["metric"])]
        metrics = list(dict.fromkeys(usual)) or list(dict.fromkeys(table["metric"]))
    unknown = [m for m in metrics if m not in set(table["metric"])]
    if unknown:
        raise ValueError(f"{function}: metrics {unknown} are not in the table (it has "
                         f"{sorted(set(table['metric']))})")
    runs = list(dict.fromkeys(table["run"]))
    part = table[table["metric"].isin(metrics)].dropna(subset=["value"]).copy()
    part["run_order"] = part["run"].map({r: i for i, r in enumerate(runs)})
    part["metric_order"] = part["metric"].map({m: i for i, m in enumerate(metrics)})
    part = part.sort_values(["run_order", "metric_order", "step"], kind="stable")
    return part.drop(columns=["run_order", "metric_order"]).reset_index(drop=True)


@_styled
def plot_compare(table: pd.DataFrame, metrics: Sequence[str] | None = None, *, title: str | None = None) -> Figure:
    """Training curves of several runs side by side: one panel per metric, one line per run.

    ``table``: ``ledger.compare(runs)`` (one row per run x step x metric); the runs are labelled by
    the settings that set them apart (its ``run`` column). ``metrics``: see :func:`compare_curves`.
    """
    data = compare_curves(table, metrics)
    metrics = list(dict.fromkeys(data["metric"]))
    runs = list(dict.fromkeys(data["run"]))
    palette = matplotlib.colormaps["tab10"]
    fig = _new_figure(3.6 * len(metrics), 3.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    handles: dict[str, Line2D] = {}
    for ax, metric in zip(axes, metrics):
        for i, run in enumerate(runs):
            part = data[(data["run"] == run) & (data["metric"] == metric)]
            if part.empty:
                continue
            style = measured_line_style(mcolors.to_hex(palette(i % 10)))
            if len(part) >= 12:
                style["marker"] = None  # long curves read better without a marker per step
            (artist,) = ax.plot(part["step"], part["value"], **style)
            handles.setdefault(f"{MEASURED_PREFIX}{run}", artist)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, axis="both")
    stages = ", ".join(str(s).upper() for s in dict.fromkeys(data["stage"]))
    _figure_legend(fig, handles, title or f"{stages} runs side by side")
    _attach_data(fig, data)
    return fig
