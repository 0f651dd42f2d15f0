"""What a run produced, as docs/benchmarks.md (tables), docs/benchmarks.svg
(the chart) and the headline block of the README, all from the run's JSON."""
import html
import math
import os
import re
import statistics

TOOLS = ("docker", "buildah", "rbuild")
README_BEGIN = "<!-- bench:begin (written by scripts/bench) -->"
README_END = "<!-- bench:end -->"


def median(samples):
    return statistics.median(s["seconds"] for s in samples)


def fmt_time(seconds):
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(kb):
    return "—" if kb is None else f"{kb / 1024:.0f} MB"


def spread(samples):
    t = [s["seconds"] for s in samples]
    return f"{fmt_time(statistics.median(t))} [{fmt_time(min(t))}–{fmt_time(max(t))}]"


def measured_steps(data):
    """(workload, step) for every measured step that has every tool's samples."""
    for w in data["workloads"]:
        for s in w["steps"]:
            if s["samples"] and all(s["samples"].get(t) for t in TOOLS):
                yield w, s


def ratio(step, other):
    return median(step["samples"]["rbuild"]) / median(step["samples"][other])


def verdict(step):
    if step.get("target") is None:
        return "—"
    ok = ratio(step, "docker") <= step["target"]
    return f"≤ {step['target']:.3g} " + ("met" if ok else "**missed**")


def markdown(data, svg_name):
    m = data["machine"]
    lines = [
        "# Benchmarks: rbuild, docker build (BuildKit) and buildah",
        "",
        "Written by `scripts/bench` from its own measurements; do not edit by hand. "
        "Rerun with `sudo scripts/bench` (see the README's Benchmarks section).",
        "",
        f"- **Date:** {m['date']}",
        f"- **Machine:** {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"stores on {m['filesystem']}",
        "- **Tools:** " + "; ".join(f"{v}" for v in m["tools"].values()) + f" (commit {m['rbuild_commit']})",
        f"- **Method:** {data['method']}",
        "",
        f"![rbuild's time as a fraction of docker build's and buildah's]({svg_name})",
        "",
        "## Times",
        "",
        "Wall time of each step, median [min–max] over the repetitions; the ratios divide rbuild's median "
        "by the other tool's. A target is the most rbuild may take as a fraction of docker's time "
        "(from the issues); a ratio below 1 means rbuild is faster.",
        "",
        "| step | docker | buildah | rbuild | rbuild / docker | rbuild / buildah | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for w, s in measured_steps(data):
        lines.append(f"| ({s['id']}) {w['title']}: {s['name']} | "
                     + " | ".join(spread(s["samples"][t]) for t in TOOLS)
                     + f" | {ratio(s, 'docker'):.3f} | {ratio(s, 'buildah'):.3f} | {verdict(s)} |")
    lines += [
        "",
        "## Peak memory",
        "",
        "The largest resident set of any single process of the step (wait4's peak, as GNU time's %M: the tool, or one of the "
        "processes it waited for), the highest over the repetitions. docker's CLI does little; "
        "BuildKit runs inside dockerd, so its column adds the daemon's growth over its size before the "
        "step (sampled every 10 ms). RUN containers under containerd are in neither.",
        "",
        "| step | docker (CLI; dockerd growth) | buildah | rbuild |",
        "|---|---:|---:|---:|",
    ]
    for w, s in measured_steps(data):
        def peak(tool, key="rss_kb"):
            vals = [x[key] for x in s["samples"][tool] if x.get(key) is not None]
            return max(vals) if vals else None
        daemon = peak("docker", "daemon_kb")
        docker = fmt_mb(peak("docker")) + (f"; +{fmt_mb(daemon)}" if daemon is not None else "")
        lines.append(f"| ({s['id']}) {w['title']}: {s['name']} | {docker} | {fmt_mb(peak('buildah'))} | "
                     f"{fmt_mb(peak('rbuild'))} |")
    lines += ["", "## Workloads", ""]
    for w in data["workloads"]:
        steps = ", ".join(f"({s['id']}) {s['name']}" + ("" if s["measure"] else " (not timed)") for s in w["steps"])
        lines.append(f"- **{w['title']}** (`benches/{w['name']}/`, {w['reps']} repetitions"
                     + (" after a warm-up" if w["warmup"] else "") + f"): {w['about']} Steps: {steps}.")
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in data["notes"]]
    lines.append(f"- {data['verified']} results checked (files and config of every image, every archive "
                 f"loaded into the engine, every OCI layout's layers against its diff IDs, every push "
                 f"against the registry); a failed check stops the run without a report.")
    lines.append(f"- Load average (1 min) at the start {data['load'][0]}, at the end {data['load'][1]}; "
                 f"the whole run took {data['wall_s'] / 60:.0f} min.")
    return "\n".join(lines) + "\n"


def headline(data):
    """The README's block: one line per measured step."""
    m = data["machine"]
    lines = [
        README_BEGIN,
        f"Last run: {m['date']}, {m['cpus']} CPUs, {m['tools'].get('docker', 'docker')}, "
        f"{m['tools'].get('buildah', 'buildah')}. rbuild's median time as a fraction of the other tool's "
        "(below 1: rbuild is faster); details, spread and memory in "
        "[docs/benchmarks.md](docs/benchmarks.md), chart in [docs/benchmarks.svg](docs/benchmarks.svg).",
        "",
        "| step | rbuild / docker build | rbuild / buildah | target vs docker |",
        "|---|---:|---:|---|",
    ]
    for w, s in measured_steps(data):
        lines.append(f"| ({s['id']}) {w['title']}: {s['name']} | {ratio(s, 'docker'):.2f} | "
                     f"{ratio(s, 'buildah'):.2f} | {verdict(s)} |")
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(path, data):
    with open(path) as f:
        text = f.read()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {README_BEGIN} … {README_END} block")
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: headline(data), text))


def svg(data):
    """A horizontal bar chart on a log scale: per step, rbuild's time over
    docker's and over buildah's, with the target and parity."""
    rows = list(measured_steps(data))
    lo, hi = 0.005, 3.0
    label_w, plot_w, right = 360, 470, 60
    bar_h, gap, top = 13, 12, 70
    width = label_w + plot_w + right
    height = top + len(rows) * (2 * bar_h + gap) + 50

    def x(r):
        r = min(max(r, lo), hi)
        return label_w + plot_w * (math.log10(r) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    colors = {"docker": "#2f6fdb", "buildah": "#c0502b"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
           f'rbuild time / other builder time (log scale; left of 1 = rbuild faster)</text>',
           f'<text x="{width / 2}" y="38" text-anchor="middle" fill="#555">'
           f'{html.escape(data["machine"]["date"])}, {data["machine"]["cpus"]} CPUs, medians</text>']
    legend_y = 52
    lx = label_w
    for tool in ("docker", "buildah"):
        out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="10" fill="{colors[tool]}"/>')
        out.append(f'<text x="{lx + 16}" y="{legend_y + 9}">vs {tool}</text>')
        lx += 110
    out.append(f'<line x1="{lx}" y1="{legend_y + 5}" x2="{lx + 14}" y2="{legend_y + 5}" stroke="black" '
               f'stroke-width="3"/><text x="{lx + 18}" y="{legend_y + 9}">target vs docker</text>')
    bottom = top + len(rows) * (2 * bar_h + gap)
    for tick in (0.01, 0.03, 0.1, 0.3, 1, 3):
        tx = x(tick)
        dash = '' if tick == 1 else ' stroke-dasharray="3,3"'
        color = "#333" if tick == 1 else "#bbb"
        out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="{color}"{dash}/>')
        out.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>')
    y = top
    for w, s in rows:
        label = f"({s['id']}) {w['title']}: {s['name']}"
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h + 4}" text-anchor="end">{html.escape(label)}</text>')
        for i, tool in enumerate(("docker", "buildah")):
            r = ratio(s, tool)
            by = y + i * bar_h
            out.append(f'<rect x="{label_w}" y="{by}" width="{x(r) - label_w:.1f}" height="{bar_h - 2}" '
                       f'fill="{colors[tool]}"><title>rbuild / {tool}: {r:.3f}</title></rect>')
            end = x(r)
            if tool == "docker" and s.get("target") is not None and abs(x(s["target"]) - end) < 30:
                end = max(end, x(s["target"]) + 2)  # keep the label clear of the target mark
            out.append(f'<text x="{end + 4:.1f}" y="{by + bar_h - 3}" font-size="11">{r:.2f}</text>')
        if s.get("target") is not None:
            tx = x(s["target"])
            out.append(f'<line x1="{tx:.1f}" y1="{y - 2}" x2="{tx:.1f}" y2="{y + bar_h}" stroke="black" '
                       f'stroke-width="3"/>')
        y += 2 * bar_h + gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_docs(data, docs_dir, readme):
    os.makedirs(docs_dir, exist_ok=True)
    with open(os.path.join(docs_dir, "benchmarks.svg"), "w") as f:
        f.write(svg(data))
    with open(os.path.join(docs_dir, "benchmarks.md"), "w") as f:
        f.write(markdown(data, "benchmarks.svg"))
    if readme:
        update_readme(readme, data)
