"""The report's figures (matplotlib, Agg backend): each function writes one PNG and returns its path, or None
when the runs hold nothing to draw (e.g. no learning-rate values)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from warmstart.report.data import Run  # noqa: E402

DPI = 110
LINESTYLES = ("-", "--", ":", "-.")
FEW_POINTS = 40  # a series with at most this many points is drawn with markers, so a single point shows


def compact(x: float, _pos=None) -> str:
    """A short tick label: 150000 -> '150k', 2.5e6 -> '2.5M', 1.6e18 -> '1.6e+18' (full integers on a narrow
    axis run together, e.g. '100000150000200000')."""
    if abs(x) >= 1e15:
        return f"{x:.2g}"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:g}"


def _count_axis(ax) -> None:
    """Tokens or FLOPs on x: at most 5 ticks, compact labels."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(compact))


def _save(fig, path: Path) -> Path:
    import io

    from warmstart import atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path


def _grid(n: int, width: float = 4.6, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _colors(runs: list[Run]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {r.name: cycle[i % len(cycle)] for i, r in enumerate(runs)}


def val_loss(runs: list[Run], out: Path, x: str) -> Path | None:
    """Validation loss per domain (and the average) vs tokens or FLOPs; all runs on shared axes per domain."""
    domains: dict[str, None] = {}
    for r in runs:
        domains.update(dict.fromkeys(r.domains()))
    keys = [f"val/{d}/loss" for d in domains]
    if len(keys) > 1:
        keys.append("val/avg/loss")
    if not keys:
        return None
    colors = _colors(runs)
    fig, axes = _grid(len(keys))
    col = 1 if x == "tokens" else 2
    for ax, key in zip(axes, keys, strict=True):
        for r in runs:
            c = r.curve(key)
            if c:
                ax.plot(
                    [p[col] for p in c],
                    [p[3] for p in c],
                    marker=".",
                    ms=3,
                    lw=1.2,
                    label=r.name,
                    color=colors[r.name],
                )
        ax.set_title(key)
        _count_axis(ax)
        ax.set_xlabel("tokens" if x == "tokens" else "FLOPs")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"validation loss vs {'tokens' if x == 'tokens' else 'FLOPs'}")
    return _save(fig, out / f"val_loss_vs_{x}.png")


def _series(run: Run, key: str) -> list[tuple[int, float]]:
    """(tokens, value) of `key`: from the training steps when they log it (an eval event's `lr` is the next
    step's, which no step has used at that token count yet), else from the evaluations."""
    pts = {}
    source = run.trains if any(key in m for m in run.trains) else run.evals
    for m in source:
        v = m.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            pts[int(m.get("tokens") or 0)] = float(v)
    return sorted(pts.items())


def line_per_run(
    runs: list[Run], out: Path, key: str, title: str, fname: str, log_y: bool = False
) -> Path | None:
    """One value over tokens, a line per run (the LR schedule; the training loss): `line_figure` saved."""
    fig = line_figure(runs, key, title, log_y)
    return None if fig is None else _save(fig, out / fname)


def line_figure(runs: list[Run], key: str, title: str, log_y: bool = False):
    """The figure of `line_per_run`, or None when no run has `key`.

    Runs get different line styles, and a run whose series equals an earlier run's says so in the legend, so a
    curve that lies exactly on another (two runs with one schedule) is not lost; short series get markers."""
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn: dict[str, list[tuple[int, float]]] = {}
    for i, r in enumerate(runs):
        s = _series(r, key)
        if not s:
            continue
        same = next((name for name, other in drawn.items() if other == s), None)
        ax.plot(
            [t for t, _ in s],
            [v for _, v in s],
            lw=1.2,
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker="." if len(s) <= FEW_POINTS else None,
            ms=5,
            label=r.name if same is None else f"{r.name} (same as {same})",
            color=colors[r.name],
        )
        drawn[r.name] = s
    if not drawn:
        plt.close(fig)
        return None
    _count_axis(ax)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def gap_windows(runs: list[Run], gaps: dict[str, dict[str, dict]], out: Path) -> Path | None:
    """Per run and domain: the loss curve with the stability-gap window (start, worst, recovery) marked."""
    cells = [(r, d) for r in runs for d in r.domains() if d in gaps.get(r.name, {})]
    dips = [(r, d) for r, d in cells if gaps[r.name][d]["depth"] > 0]
    cells = dips or cells  # curves with a gap; every curve when none has one
    if not cells:
        return None
    fig, axes = _grid(len(cells), 4.2, 3.0)
    for ax, (r, d) in zip(axes, cells, strict=True):
        g = gaps[r.name][d]
        c = r.curve(f"val/{d}/loss")
        ax.plot([p[1] for p in c], [p[3] for p in c], marker=".", ms=3, lw=1.0, color="0.3")
        ax.axhline(g["start"], color="tab:blue", ls=":", lw=1, label=f"start {g['start']:.3f}")
        ax.plot([g["worst_tokens"]], [g["worst"]], "v", color="tab:red", label=f"worst {g['worst']:.3f}")
        if g["recovered"] and g["depth"] > 0:
            ax.axvspan(c[0][1], g["recover_tokens"], color="tab:orange", alpha=0.15, label="gap window")
            ax.axvline(
                g["recover_tokens"], color="tab:green", lw=1, label=f"recovered @ {g['recover_tokens']:,}"
            )
        elif g["depth"] > 0:
            ax.axvspan(c[0][1], c[-1][1], color="tab:red", alpha=0.08, label="not recovered")
        ax.set_title(f"{r.name}: {d}", fontsize=9)
        _count_axis(ax)
        ax.set_xlabel("tokens")
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("stability gap (start, worst, recovery)")
    return _save(fig, out / "stability_gap.png")


def mixture_weights(mixes: list[dict], out: Path) -> Path | None:
    """Mixture weight per domain vs token budget (AutoScale: DDO optima measured, predicted ones hollow)."""
    if not mixes:
        return None
    mixes = sorted(mixes, key=lambda m: m["budget"])
    domains: dict[str, None] = {}
    for m in mixes:
        domains.update(dict.fromkeys(m["weights"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, d in enumerate(domains):
        xs = [m["budget"] for m in mixes]
        ys = [m["weights"].get(d, 0.0) for m in mixes]
        ax.plot(xs, ys, lw=1.0, color=cycle[i % len(cycle)], label=d)
        for m, y in zip(mixes, ys, strict=True):
            ax.plot(
                [m["budget"]],
                [y],
                "o",
                color=cycle[i % len(cycle)],
                mfc="white" if m["predicted"] else cycle[i % len(cycle)],
            )
    if len(mixes) > 1 and mixes[0]["budget"] > 0:
        ax.set_xscale("log")
    ax.set_xlabel("token budget")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1)
    ax.set_title("mixture weights vs budget (hollow: predicted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "mixture_weights.png")


def grow_rounds(grows: list[dict], out: Path) -> Path | None:
    """Validation loss per grow round (by depth) against the reference model's loss."""
    if not grows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(grows):
        color = cycle[i % len(cycle)]
        xs = [r["n_layers"] for r in g["rounds"]]
        ax.plot(xs, [r["val_loss"] for r in g["rounds"]], "o-", color=color, label=f"{g['name']} rounds")
        if g.get("baseline"):
            ax.plot(
                [g["baseline"]["n_layers"]],
                [g["baseline"]["val_loss"]],
                "x",
                ms=9,
                color=color,
                label=f"{g['name']} random init",
            )
        if g["reference_loss"] is not None:
            ax.axhline(g["reference_loss"], color=color, ls="--", lw=1, label=f"{g['name']} reference")
    ax.set_xlabel("layers")
    ax.set_ylabel("val loss")
    ax.set_title("grow rounds vs the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "grow_rounds.png")
