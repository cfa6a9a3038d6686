"""sa-bench's outputs: the JSON report written atomically, a markdown table, and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stable_audio_rt.atomic import atomic_path, write_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_json(report: dict[str, Any], path: Path) -> None:
    write_atomically(path, json.dumps(report, indent=2, default=str) + "\n")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}"


def _snr(value: float) -> str:
    return "identical" if value == math.inf else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    preset = f" (preset {report['preset']})" if report.get("preset") else ""
    memory = f", malloc: {report['malloc']}" if report.get("malloc") else ""  # absent before 2026-11-29
    ort = f", onnxruntime {report['onnxruntime']}" if report.get("onnxruntime") else ""  # since 2026-11-30
    lines = [
        f"sa-bench, {report['date']}, {report['device']}, torch {report['torch']}{ort}{memory}: "
        f"`{report['command']}`{preset}",
        "",
        "| backend | precision | kernels | frames | steps | batch | warm p50 (s) | RTF | × real time "
        "| per step (s) | floor / step | latent cos. dist. | SNR (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        q = run["quality"]
        lines.append(
            f"| {run['backend']} | {run['label']} | {run['kernels'] or 'engine'} | {run['frames']} "
            f"| {run['steps']} | {run['batch']} "
            f"| {_fmt(run['warm_s']['total']['p50'])} | {_fmt(run['rtf'])} | {_fmt(run['x_real_time'])} "
            f"| {_fmt(run['per_step_s'])} | {_fmt(run['floor']['dit_step_fraction'], 2)} "
            f"| {_fmt(q['latent_cosine_distance'], 2)} | {_fmt(q['waveform_snr_db'], 3)} |"
        )
    for peer in report.get("peer", []):
        lines += [
            "",
            f"diffusers StableAudioPipeline in {peer['diffusers_precision']} (every module, T5 included) "
            f"on the same weights and work ({peer['frames']} frames, {peer['steps']} steps, batch "
            f"{peer['batch']}), interleaved with ours ({peer['ours']}): ours {_fmt(peer['ours_s_p50'])} s, "
            f"diffusers {_fmt(peer['diffusers_s_p50'])} s, ratio ×{_fmt(peer['ratio_p50'])} (per pair: "
            f"{', '.join(_fmt(p['ratio']) for p in peer['pairs'])}).",
        ]
    lines += _precision_table(report.get("precision_report", []))
    floors = "; ".join(
        f"{v['library']} {v['dtype']} ({v['shapes'].removeprefix('DiT step, ')}): {v['gflops_per_s']:.0f}"
        for v in report["gemm_floor"].values()
    )
    above = [run["label"] for run in report["runs"] if run["floor"]["dit_step_fraction"] > 1]
    if above:  # faster than the floor is impossible: the floor's probe was slowed
        lines += [
            "",
            f"**The GEMM floor was measured low** (floor / step above 1 for {', '.join(above)}): other work "
            "on the machine slowed its probe; rerun when the machine is quiet.",
        ]
    lines += [
        "",
        "RTF: warm p50 ÷ the clip's seconds (below 1 is faster than real time); × real time: its "
        "inverse; floor / step: the DiT step's time at the GEMM floor ÷ its measured time (1 = at the "
        "floor). Latent cosine distance and SNR against the fp32 torch row on the same seed.",
        "",
        f"GEMM floor (GFLOP/s) on the DiT step's product shapes, per library and precision; each row's "
        f"step is compared with its own precision's: {floors}.",
    ]
    return "\n".join(lines) + "\n"


def _precision_table(entries: list[dict[str, Any]]) -> list[str]:
    """One line per compared row and shape: each stage's SNR (dB) and max relative error."""
    if not entries:
        return []
    stages = [s["stage"] for s in entries[0]["stages"]]
    lines = [
        "",
        f"Precision, one call per stage against {entries[0]['reference']} (SNR dB / max relative "
        f"error; DiT stages: the DiT output, and in brackets the sampler's guided denoised estimate):",
        "",
        "| ours | frames | batch | " + " | ".join(stages) + " |",
        "|---|---|---|" + "---|" * len(stages),
    ]
    for entry in entries:
        cells = []
        for stage in entry["stages"]:
            cell = f"{_snr(stage['snr_db'])} / {_fmt(stage['max_relative_error'], 2)}"
            if stage["denoised_snr_db"] is not None:
                cell += f" ({_snr(stage['denoised_snr_db'])})"
            cells.append(cell)
        lines.append(f"| {entry['ours']} | {entry['frames']} | {entry['batch']} | {' | '.join(cells)} |")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """Warm latency against frames, one line per backend/precision, with the GEMM floor."""
    import matplotlib.pyplot as plt

    figure = latency_figure(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def latency_figure(report: dict[str, Any]) -> Figure:
    """The plot's figure: each series' GEMM floor is dashed in the series' own colour, so a
    floor reads against its row (grey floors could not be told apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for run in report["runs"]:
        key = f"{run['backend']} {run['label']} (steps {run['steps']}, batch {run['batch']})"
        series.setdefault(key, []).append(
            (run["frames"], run["warm_s"]["total"]["p50"], run["floor"]["request_s"])
        )
    for key, points in series.items():
        points.sort()
        frames = [p[0] for p in points]
        (measured,) = axis.plot(frames, [p[1] for p in points], marker="o", label=key)
        axis.plot(frames, [p[2] for p in points], linestyle="--", marker="x", color=measured.get_color())
    axis.plot(
        [], [], linestyle="--", marker="x", color="grey",
        label="dashed, same colour: the row's GEMM floor (FLOPs / measured GEMM rate)",
    )  # fmt: skip
    axis.set_ylim(bottom=0)
    axis.set_xlabel("latent frames")
    axis.set_ylabel("seconds per request (warm p50)")
    axis.set_title(f"sa-bench on {report['device']}")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
