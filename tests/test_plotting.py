"""Each figure draws what it is given, keeps paper and measured series apart, and saves PNG + CSV."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib import _pylab_helpers
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from tulu_lab import plotting
from tulu_lab.reference import tulu3_stage_scores

CITATION = "arXiv:2411.15124v5"


# ---------------------------------------------------------------------------------------------- helpers

def legend_labels(fig: Figure) -> list[str]:
    labels = []
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        labels += [text.get_text() for text in legend.get_texts()]
    return labels


def footnote(fig: Figure) -> str:
    return "\n".join(text.get_text() for text in fig.texts)


def n_bars(ax) -> int:
    return sum(len(container) for container in ax.containers)


def visible_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>" and ax.lines + ax.patches]


def measured_frame(stages=("SFT", "DPO", "RLVR"), fractions=True) -> pd.DataFrame:
    rows = []
    for benchmark, metric, base in [("gsm8k", "flex", 0.02), ("IFEval", "prompt_loose", 0.25)]:
        for i, stage in enumerate(stages):
            value = base * (1 + 0.3 * i)
            rows.append({"model": "tiny-llama", "stage": stage, "benchmark": benchmark, "metric": metric,
                         "value": value if fractions else value * 100, "n": 200, "stderr": 0.01})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    yield
    # the object API only: nothing may be registered with pyplot's figure manager
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0


# ---------------------------------------------------------------------------------------------- 1. 405B

def test_405b_comparison_bars_labels_and_flag():
    fig = plotting.plot_405b_comparison()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert n_bars(ax) == 5 * 12
    labels = legend_labels(fig)
    assert labels == ["paper: Tülu 3 405B", "paper: Llama 3.1 405B Instruct", "paper: Hermes 3 405B",
                      "paper: DeepSeek V3", "paper: GPT-4o (2024-11-20)"]
    note = footnote(fig)
    assert CITATION in note and "78.3" in note and "75.9" in note
    data = plotting.plotted_data(fig)
    assert len(data) == 60 and set(data.series) == {"paper"}
    flagged = data[data.flagged_average]
    assert flagged[["benchmark", "model"]].values.tolist() == [["Avg_w_safety", "DeepSeek-V3"]]
    gsm8k = data[(data.benchmark == "GSM8K") & (data.model == "Tulu-3-405B")].value.item()
    assert gsm8k == 95.5
    texts = [t.get_text() for t in ax.texts]
    # the headline leads come from the numbers: GSM8K 95.5 vs 95.4, PopQA 55.5 vs 54.2
    assert "Tülu 3 405B\nleads by 0.1" in texts and "Tülu 3 405B\nleads by 1.3" in texts


def test_405b_comparison_subset_and_errors():
    df = plotting.table4_long()
    fig = plotting.plot_405b_comparison(df[df.benchmark != "Safety"], models=["Tulu-3-405B", "DeepSeek-V3"])
    assert n_bars(fig.axes[0]) == 2 * 11
    # averages cannot be checked without the Safety row, so nothing is starred
    assert not plotting.plotted_data(fig).flagged_average.any()
    with pytest.raises(ValueError, match="Claude"):
        plotting.plot_405b_comparison(df, models=["Tulu-3-405B", "Claude"])
    with pytest.raises(ValueError, match="lacks columns"):
        plotting.plot_405b_comparison(df.drop(columns=["value"]))


# ---------------------------------------------------------------------------------------------- 2. stages

def test_stage_progression_paper_only():
    fig = plotting.plot_stage_progression(tulu3_stage_scores("v5"))
    panels = visible_axes(fig)
    assert len(panels) == 12  # 12 benchmarks, averages dropped
    gsm8k = next(ax for ax in panels if ax.get_title().startswith("GSM8K"))
    assert len(gsm8k.lines) == 3 and all(line.get_linestyle() == "--" for line in gsm8k.lines)
    truthfulqa = next(ax for ax in panels if ax.get_title().startswith("TruthfulQA"))
    assert len(truthfulqa.lines) == 2  # not in the 405B table
    assert legend_labels(fig) == ["paper: Tülu 3 8B (v5)", "paper: Tülu 3 70B (v5)", "paper: Tülu 3 405B (v5)"]
    assert CITATION in footnote(fig)
    popqa = next(ax for ax in panels if ax.get_title().startswith("PopQA"))
    assert "15-shot (8B, 70B)" in popqa.get_title() and "3-shot (405B)" in popqa.get_title()


def test_stage_progression_with_measured_keeps_series_distinct():
    fig = plotting.plot_stage_progression(tulu3_stage_scores("v5"), measured_frame(("base", "SFT", "DPO", "RLVR")),
                                          measured_settings="LoRA r8")
    labels = legend_labels(fig)
    paper = [label for label in labels if label.startswith("paper: ")]
    measured = [label for label in labels if label.startswith("measured here: ")]
    assert len(paper) == 3 and measured == ["measured here: tiny-llama, LoRA r8"]
    assert len(paper) + len(measured) == len(labels)
    gsm8k = next(ax for ax in visible_axes(fig) if ax.get_title().startswith("GSM8K"))
    styles = sorted(line.get_linestyle() for line in gsm8k.lines if line.get_linestyle() != "None")  # not caps
    assert styles == ["-", "--", "--", "--"]
    assert [t.get_text() for t in gsm8k.get_xticklabels()] == ["base", "SFT", "DPO", "RLVR"]
    assert "n=200" in gsm8k.get_xlabel()
    data = plotting.plotted_data(fig)
    ours = data[(data.series == "measured here") & (data.benchmark == "gsm8k")]
    assert ours.value.tolist() == pytest.approx([2.0, 2.6, 3.2, 3.8])  # fractions shown x100
    assert ours.stderr.tolist() == pytest.approx([1.0] * 4)


def test_stage_progression_measured_only_percent():
    fig = plotting.plot_stage_progression(None, measured_frame(fractions=False), measured_unit="percent")
    assert len(visible_axes(fig)) == 2
    assert all(label.startswith("measured here: ") for label in legend_labels(fig))
    assert plotting.plotted_data(fig).value.max() == pytest.approx(40.0)  # 0.25 x 1.6, already percent


def test_stage_progression_matches_benchmark_spellings():
    measured = measured_frame().assign(benchmark=lambda d: d.benchmark.map({"gsm8k": "GSM-8K", "IFEval": "bbh"}))
    fig = plotting.plot_stage_progression(tulu3_stage_scores("v5"), measured)
    assert len(visible_axes(fig)) == 12  # joined the paper's GSM8K and BigBenchHard panels
    bbh = next(ax for ax in visible_axes(fig) if ax.get_title().startswith("BBH"))
    assert sorted(line.get_linestyle() for line in bbh.lines if line.get_linestyle() != "None") == ["-", "--", "--", "--"]


def test_stage_progression_refuses_mixed_versions_and_ambiguous_metrics():
    mixed = pd.concat([tulu3_stage_scores("v5"), tulu3_stage_scores("v1")])
    with pytest.raises(ValueError, match="v1 and v5"):
        plotting.plot_stage_progression(mixed)
    measured = measured_frame()
    strict = measured[measured.benchmark == "gsm8k"].assign(metric="strict", value=0.01)
    both = pd.concat([measured, strict])
    with pytest.raises(ValueError, match="several metrics"):
        plotting.plot_stage_progression(None, both)
    fig = plotting.plot_stage_progression(None, both, metrics={"GSM8K": "strict"})
    gsm8k = plotting.plotted_data(fig).query("benchmark == 'gsm8k'")
    assert set(gsm8k.metric) == {"strict"}
    with pytest.raises(ValueError, match="unknown stage"):
        plotting.plot_stage_progression(None, measured.assign(stage="PPO"))
    with pytest.raises(ValueError, match="paper_df, measured_df"):
        plotting.plot_stage_progression(None, None)


# ---------------------------------------------------------------------------------------------- 3. curves

def rlvr_metrics(seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for beta in (0.01, 0.1):
        for seed in seeds:
            for step in range(5):
                rows.append({"beta": beta, "seed": seed, "step": step, "episodes": step * 16,
                             "reward": step + seed, "kl": beta * step, "completions/mean_length": 50 + step})
    return pd.DataFrame(rows)


def test_rlvr_curves_mean_and_band_over_seeds():
    fig = plotting.plot_rlvr_curves(rlvr_metrics(), model="tiny-llama")
    panels = visible_axes(fig)
    assert len(panels) == 3
    for ax in panels:
        assert len(ax.lines) == 2
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # one band per beta
        assert ax.get_xlabel() == "episodes"
    assert legend_labels(fig) == ["measured here: β=0.01", "measured here: β=0.1"]
    data = plotting.plotted_data(fig)
    reward = data[(data.metric == "reward") & (data.beta == 0.01) & (data.x == 32)]
    assert reward["mean"].item() == 2.5 and reward["low"].item() == 2 and reward["high"].item() == 3
    assert "tiny-llama" in fig.legends[0].get_title().get_text()


def test_rlvr_curves_single_seed_tasks_and_errors():
    df = rlvr_metrics(seeds=(0,)).drop(columns=["episodes"])
    tasks = pd.concat([df.assign(task="GSM8K"), df.assign(task="MATH")])
    fig = plotting.plot_rlvr_curves(tasks, metrics=("reward", "kl"))
    panels = visible_axes(fig)
    assert len(panels) == 4 and all(ax.get_xlabel() == "step" for ax in panels)
    assert all(not any(isinstance(c, PolyCollection) for c in ax.collections) for ax in panels)
    with pytest.raises(ValueError, match="entropy"):
        plotting.plot_rlvr_curves(df, metrics=("reward", "entropy"))
    with pytest.raises(ValueError, match="empty 'beta'"):
        plotting.plot_rlvr_curves(df.assign(beta=np.where(df.step == 3, np.nan, df.beta)))


# ---------------------------------------------------------------------------------------------- 4. KL

def overopt_frame() -> pd.DataFrame:
    rows = []
    for arm in ("verifiable only", "verifiable + RM"):
        for beta, kl in ((0.1, 1.0), (0.03, 4.0), (0.01, 9.0)):
            for benchmark in ("GSM8K test", "average"):
                for seed in (0, 1):
                    rows.append({"arm": arm, "beta": beta, "kl": kl + seed, "benchmark": benchmark,
                                 "value": 10 + kl + seed, "seed": seed})
    return pd.DataFrame(rows)


def test_overoptimization_arms_points_and_baseline():
    fig = plotting.plot_overoptimization(overopt_frame(), baseline={"GSM8K test": 9.0}, kl_scale="log")
    panels = visible_axes(fig)
    assert len(panels) == 2
    first = panels[0]
    curves = [line for line in first.lines if len(line.get_xdata()) > 1 and line.get_linestyle() == "-"]
    assert len(curves) == 2 and all(len(line.get_xdata()) == 3 for line in curves)
    assert legend_labels(fig) == ["measured here: verifiable only", "measured here: verifiable + RM",
                                  "starting checkpoint"]
    points = plotting.plotted_data(fig)
    assert len(points) == 2 * 3 * 2 and set(points.n_seeds) == {2}
    assert points.query("beta == 0.1 and arm == 'verifiable only'").kl.tolist() == [1.5, 1.5]
    with pytest.raises(ValueError, match="log"):
        plotting.plot_overoptimization(overopt_frame().assign(kl=0.0), kl_scale="log")


# ---------------------------------------------------------------------------------------------- 5. fig 25

def test_405b_math_rlvr_plots_only_published_numbers():
    fig = plotting.plot_405b_math_rlvr()
    ax = fig.axes[0]
    plotted_y = {float(y) for line in ax.lines for y in line.get_ydata()}
    assert plotted_y == {59.9, 67.3}  # the Table 4 endpoints, nothing in between
    plotted_x = {float(x) for line in ax.lines for x in line.get_xdata()}
    assert plotted_x == {0.0, 75.0}
    labels = legend_labels(fig)
    assert len(labels) == 2 and all(label.startswith("paper: ") for label in labels)
    note = footnote(fig)
    assert CITATION in note and "allenai.org/blog/tulu-3-405B" in note and "Figure 25" in note
    data = plotting.plotted_data(fig)
    assert data.episodes.tolist() == [0, 75 * 1856]


def test_405b_math_rlvr_with_measured_panel():
    measured = pd.DataFrame({"step": [0, 5, 10], "value": [1.0, 2.0, 2.5], "metric": "MATH-500 (%)"})
    fig = plotting.plot_405b_math_rlvr(measured_df=measured, measured_label="tiny-llama")
    assert len(visible_axes(fig)) == 2
    labels = legend_labels(fig)
    assert "measured here: tiny-llama" in labels
    assert sum(label.startswith("paper: ") for label in labels) == 2
    assert len(plotting.plotted_data(fig)) == 5


def test_fig25_points_follow_the_hparams_table():
    hparams = plotting.reference.paper_table("hparams")
    hparams.loc[(hparams.stage == "RLVR") & (hparams.scale == "405B") & (hparams.param == "training_steps"),
                "value"] = "80"
    points = plotting.fig25_points(hparams=hparams)
    assert points.step.tolist() == [0, 80] and points.episodes.tolist() == [0, 80 * 1856]


# ---------------------------------------------------------------------------------------------- 6. memory

def memory_frame() -> pd.DataFrame:
    weights = {"8B": (16.1, 9.1, 5.7), "70B": (141.1, 72.7, 39.5), "405B": (811.7, 410.1, 215.6)}
    return pd.DataFrame([
        {"model": f"llama-3.1-{size.lower()}", "quant": quant, "weights_gb": w, "kv_gb": 0.5,
         "activations_gb": 0.6, "total_gb": w + 1.1}
        for size, ws in weights.items() for quant, w in zip(("bf16", "int8", "nf4"), ws)
    ])


def test_memory_plan_stacks_components_and_draws_capacities():
    fig = plotting.plot_memory_plan(memory_frame())
    ax = fig.axes[0]
    assert n_bars(ax) == 9 * 3  # weights, KV cache, activations per bar
    assert len(ax.lines) == 4 + 2 * 3  # four GPUs, then 2/4/8 x 80 GB and 2/4/8 x 141 GB
    assert sorted(round(line.get_ydata()[0]) for line in ax.lines) == [24, 48, 80, 141, 160, 282, 320, 564,
                                                                        640, 1128]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"]
    labels = legend_labels(fig)
    assert labels[:3] == ["weights, bf16", "weights, int8", "weights, nf4"]
    assert "KV cache" in labels and "activations" in labels and "other" not in labels
    data = plotting.plotted_data(fig)
    pd.testing.assert_frame_equal(data[["model", "quant", "weights_gb", "kv_gb", "activations_gb", "total_gb"]],
                                  memory_frame()[["model", "quant", "weights_gb", "kv_gb", "activations_gb",
                                                  "total_gb"]])
    assert (data.other_gb == 0).all()


def test_memory_plan_totals_only_and_errors():
    totals = memory_frame()[["model", "quant", "total_gb"]]
    fig = plotting.plot_memory_plan(totals)
    assert n_bars(fig.axes[0]) == 9
    bad = memory_frame().assign(total_gb=1.0)
    with pytest.raises(ValueError, match="below the sum"):
        plotting.plot_memory_plan(bad)
    with pytest.raises(ValueError, match="weights_gb"):
        plotting.plot_memory_plan(memory_frame()[["model", "quant"]])
    with pytest.raises(ValueError, match="more than one row"):
        plotting.plot_memory_plan(pd.concat([totals, totals.head(1)]))


# ---------------------------------------------------------------------------------------------- saving

def test_save_fig_writes_png_and_the_plotted_csv(tmp_path):
    fig = plotting.plot_405b_comparison()
    png, csv = plotting.save_fig(fig, "01_405b_comparison", figures_dir=tmp_path / "figures")
    assert png == tmp_path / "figures" / "01_405b_comparison.png" and csv.with_suffix(".png") == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(csv)
    pd.testing.assert_frame_equal(written, plotting.plotted_data(fig), check_dtype=False)


def test_save_fig_with_explicit_data(tmp_path):
    data = pd.DataFrame({"model": ["a", "b"], "quant": ["nf4", "bf16"], "total_gb": [1.5, 3.0]})
    fig = plotting.plot_memory_plan(data)
    png, csv = plotting.save_fig(fig, "06_memory", data=data, figures_dir=tmp_path)
    assert png.exists() and png.stat().st_size > 1000
    pd.testing.assert_frame_equal(pd.read_csv(csv), data)


def test_save_fig_rejects_bad_names_and_foreign_figures(tmp_path):
    fig = plotting.plot_405b_math_rlvr()
    with pytest.raises(ValueError, match="NN_name"):
        plotting.save_fig(fig, "comparison", figures_dir=tmp_path)
    with pytest.raises(ValueError, match="data="):
        plotting.save_fig(Figure(), "07_empty", figures_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_style_is_consistent():
    assert set(plotting.STAGE_COLORS) == {"base", "SFT", "DPO", "RLVR"}
    assert len(set(plotting.STAGE_COLORS.values())) == 4
    # a stage checkpoint takes its stage's colour, a known model its own
    assert plotting.model_color("Tulu-3-405B-DPO") == plotting.STAGE_COLORS["DPO"]
    assert plotting.model_color("Tulu-3-405B") == plotting.MODEL_COLORS["Tulu-3-405B"]
    assert not set(plotting.MEASURED_COLORS) & set(plotting.MODEL_COLORS.values())
    fig = plotting.plot_405b_comparison()
    assert fig.axes[0].title.get_fontsize() == plotting.STYLE["axes.titlesize"]
    assert np.isclose(matplotlib.rcParams["font.size"], matplotlib.rcParamsDefault["font.size"])


def test_smoke_runs_never_write_the_committed_figures(tmp_path, monkeypatch):
    from tulu_lab import paths

    monkeypatch.delenv("TULU_LAB_FIGURES", raising=False)
    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path))
    monkeypatch.setenv("TULU_LAB_SMOKE", "0")
    assert paths.figures_dir() == paths.project_root() / "figures"
    monkeypatch.setenv("TULU_LAB_SMOKE", "1")
    assert paths.figures_dir() == tmp_path / "smoke" / "figures"
    monkeypatch.setenv("TULU_LAB_FIGURES", str(tmp_path / "elsewhere"))
    assert paths.figures_dir() == tmp_path / "elsewhere"
