"""PNG plots of the rows just measured (``--plot DIR``; needs matplotlib, the ``bench``
extra)."""

from __future__ import annotations

from pathlib import Path


def plot(rows: list[dict], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    batch_rows = [r for r in rows if r.get("experiment") == "batch" and "system" in r]
    if batch_rows:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
        for row in batch_rows:
            label = (
                f"fixed {row['batch']}"
                if row["system"] == "fixed"
                else row["system"].replace("_", " ")
            )
            curve = row["curves"][0]
            line = ax1.plot([c[1] for c in curve], [c[2] for c in curve], label=label)[0]
            for other in row["curves"][1:]:
                ax1.plot(
                    [c[1] for c in other], [c[2] for c in other], color=line.get_color(), alpha=0.3
                )
            if row["system"] != "fixed":
                bc = row["batch_curves"][0]
                ax2.step([c[1] for c in bc], [c[2] for c in bc], where="post", label=label)
        target = batch_rows[0]["target"]
        ax1.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax1.set_xscale("log")
        ax1.set_xlabel("training seconds (log)")
        ax1.set_ylabel("held-out accuracy")
        ax1.set_ylim(max(0.5, ax1.get_ylim()[0]), None)
        ax1.set_title("time to accuracy (seed 0 bold, others faint)")
        ax1.legend(fontsize=8)
        ax2.set_yscale("log", base=2)
        ax2.set_xlabel("training seconds")
        ax2.set_ylabel("global batch (policy's choice)")
        ax2.set_title("batch chosen by the policy (seed 0)")
        ax2.legend(fontsize=8)
        for row in batch_rows:
            if row["system"] == "fixed" and row.get("gns_curves"):
                gc = row["gns_curves"][0]
                ax3.plot([c[0] for c in gc], [c[1] for c in gc], label=f"fixed {row['batch']}")
        ax3.set_yscale("log")
        ax3.set_xlabel("samples trained on")
        ax3.set_ylabel("gradient noise scale (runtime's estimate)")
        ax3.set_title("the noise scale grows as it trains (seed 0)")
        ax3.legend(fontsize=8)
        fig.tight_layout()
        path = directory / "adaptive_batch.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    inter = [r for r in rows if r.get("experiment") == "interference" and "series" in r]
    if inter:
        fig, ax = plt.subplots(figsize=(8, 4))
        for row in inter:
            series = row["series"]
            line = ax.plot([s[0] for s in series], [s[1] for s in series], label=row["system"])[0]
            for step, _ in row.get("decisions", []):
                ax.axvline(step, linestyle="--", linewidth=1, color=line.get_color())
        ax.axvline(inter[0]["slow_at"], color="red", linewidth=1, label="path slowed")
        ax.axvline(inter[0]["slow_until"], color="red", linestyle=":", linewidth=1,
                   label="path restored")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("throughput (samples/s)")
        ax.set_title("the path between two workers slowed mid-run (seed 0; dashed: decisions)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / "adaptive_interference.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    scale = [r for r in rows if r.get("experiment") == "scaleout" and "workers" in r]
    if scale:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["workers"] for r in scale]
        ys = [r["throughput"] for r in scale]
        if all("throughput_range" in r for r in scale):  # min–max over seeds
            low = [y - r["throughput_range"][0] for y, r in zip(ys, scale, strict=True)]
            high = [r["throughput_range"][1] - y for y, r in zip(ys, scale, strict=True)]
            ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label="throughput")
        else:
            ax.plot(xs, ys, marker="o", label="throughput")
        ax.set_xlabel("workers")
        ax.set_ylabel("samples/s")
        ax2 = ax.twinx()
        effs = [r["efficiency"] for r in scale]
        if all("efficiency_range" in r for r in scale):
            low = [e - r["efficiency_range"][0] for e, r in zip(effs, scale, strict=True)]
            high = [r["efficiency_range"][1] - e for e, r in zip(effs, scale, strict=True)]
            ax2.errorbar(
                xs, effs, yerr=[low, high], marker="s", color="C1", capsize=3, label="efficiency"
            )
        else:
            ax2.plot(xs, effs, marker="s", color="C1", label="efficiency")
        ax2.set_ylabel("efficiency (per-worker vs 1 worker)")
        stop = next(
            (r for r in rows if r.get("experiment") == "scaleout" and "policy_stops_at" in r), None
        )
        if stop and stop["policy_stops_at"]:
            ax.axvline(stop["policy_stops_at"], color="grey", linestyle="--", label="policy stops")
        handles, labels = ax.get_legend_handles_labels()
        handles2, labels2 = ax2.get_legend_handles_labels()
        ax.legend(handles + handles2, labels + labels2, loc="upper right", fontsize=8)
        ax.set_xticks(xs)
        ax.set_title("medians over seeds; bars: min–max", fontsize=9)
        fig.tight_layout()
        path = directory / "adaptive_scaleout.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
