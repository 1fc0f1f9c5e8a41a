"""Report helpers shared by bench/compare.sh and bench/openwire.sh (imported by their embedded
report scripts): medians per scenario and broker, the results table against the targets, and
the load table."""
import json
import statistics

BROKERS = ("ferromq", "activemq")


def lines(path):
    """The JSON objects of a .jsonl file."""
    return [json.loads(line) for line in open(path) if line.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def us(x):
    """Microseconds as µs or ms, for latency cells."""
    if x is None:
        return "–"
    return f"{x/1000:.1f} ms" if x >= 10000 else f"{x/1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"


def timed_and_counted(runs):
    """The timed runs, and {(scenario, broker): the untimed run that counted fsyncs}."""
    return ([r for r in runs if not r.get("counting")],
            {(r["scenario"], r["broker"]): r for r in runs if r.get("counting")})


def add_fsync_counts(summary, counted, figures):
    """Messages per fsync from the counting runs (timed runs are never counted, see
    count_fsyncs in bench/lib.sh)."""
    for key, x in summary.items():
        x["per_fsync"] = figures(counted[key])["per_fsync"] if key in counted else None


def summarize(runs, figures, scenarios):
    """{(scenario, broker): median of each figure, plus "all": every run's rate}."""
    summary = {}
    for s in scenarios:
        for b in BROKERS:
            fs = [figures(r) for r in runs if r["scenario"] == s and r["broker"] == b]
            if fs:
                summary[(s, b)] = {k: med([f[k] for f in fs]) for k in fs[0]} | {"all": [f["rate"] for f in fs]}
    return summary


def results_table(summary, names, targets, title, failed=(), skip_empty=False):
    """The headline table: ferromq and ActiveMQ medians, their ratio against each target."""
    print(f"## Results ({title})\n")
    print("| scenario | ferromq msg/s | ActiveMQ msg/s | ratio | target | met | ferromq p50 / p99 | ActiveMQ p50 / p99 |")
    print("|---|---:|---:|---:|---:|:---:|---|---|")
    for s in ("sync", "conc", "drain"):
        f, a = summary.get((s, "ferromq")), summary.get((s, "activemq"))
        if skip_empty and not f and not a:
            continue
        ratio = f["rate"] / a["rate"] if f and a and a["rate"] else None
        met = "–" if ratio is None else ("yes" if ratio >= targets[s] else "**no**")
        lat = lambda x: "–" if not x or x["p50"] is None else f"{us(x['p50'])} / {us(x['p99'])}"
        rate = lambda x, b: f"{x['rate']:,.0f}" if x else ("**failed**" if b in failed else "–")
        print(f"| {names[s]} | {rate(f, 'ferromq')} | {rate(a, 'activemq')} | {'–' if ratio is None else f'{ratio:.2f}×'} "
              f"| ≥ {targets[s]:g}× | {met} | {lat(f)} | {lat(a)} |")


def load_table(loads):
    """Load before and after each scenario, from loads.jsonl objects keyed by scenario."""
    print("### Load\n")
    print("| scenario | before | after | CPU busy before (others) |")
    print("|---|---|---|---:|")
    for s, l in loads.items():
        strip = lambda u: u.split("load average:")[-1].strip()
        print(f"| {s} | {strip(l['before'])} | {strip(l['after'])} | {l['busy_before_pct']}% |")
