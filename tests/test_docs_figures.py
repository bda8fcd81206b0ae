"""The measured figures the documentation quotes against the files that hold them.

``docs/calibration.json`` holds the calibration (``python -m dakd calibrate`` writes it);
``docs/measurements.json`` holds the rest (wall times, the main job's summary, the test suite,
the benchmarks' outputs), each with the command and the machine that measured it;
``dakd/runtime/step_times.json`` holds the GPU step times a sweep's dry run costs with, and
``weights/embedded/manifest.json`` the pretrained students' proxy-task mIoU. ``QUOTES`` names,
file by file, the phrases that quote a figure: each must still be in its file and quote the
value its record holds (or the value derived from it, as the docs print it). A benchmark's
output reproduced in a doc is its record's ``output``, line for line; a table of figures is
its record, cell by cell. A new measurement goes into the record first, then into the docs.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Files whose figures are checked, relative to the repository.
RECORD = "docs/measurements.json"
CALIBRATION = "docs/calibration.json"
#: The same calibration on seeds no choice was made on (5 and 6), run once after the choices.
CALIBRATION_HELDOUT = "docs/calibration-heldout.json"
#: The calibration the logit-grid comparison of docs/gpu.md was measured against (revision 3's
#: shipped teachers): its seed 0 is that table's ``image`` column.
CALIBRATION_R3 = "docs/history/calibration-r3.json"
STEP_TIMES = "dakd/runtime/step_times.json"
MANIFEST = "weights/embedded/manifest.json"


def _load(path: str):
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


# -- the figures --------------------------------------------------------------------------------
def _fmt_gain(value: float) -> str:
    return f"{value:+.1f}"


def calibration_figures(data: dict) -> dict[str, str]:
    """The figures the docs derive from the calibration, as the docs print them."""
    results = data["results"]
    out: dict[str, str] = {}
    gains_bcd: list[float] = []
    for scenario, rows in results.items():
        fair = rows["student-DA + extra steps"]
        per = {p: [d - f for d, f in zip(rows[f"DAKD ({p})"], fair)] for p in "abcd"}
        gains_bcd += [g for p in "bcd" for g in per[p]]
        best = [max(rows[f"DAKD ({p})"][i] for p in "bcd") - fair[i] for i in range(len(fair))]
        out[f"{scenario}.best_gain_min"] = _fmt_gain(min(best))
        out[f"{scenario}.best_gain_max"] = _fmt_gain(max(best))
        for p in "acd":
            out[f"{scenario}.gain_{p}_mean"] = _fmt_gain(statistics.mean(per[p]))
        teacher = statistics.mean(rows["teacher (shipped)"])
        student = statistics.mean(rows["student-DA"])
        out[f"{scenario}.teacher_lead"] = _fmt_gain(teacher - student)
    out["gain_bcd_min"] = _fmt_gain(min(gains_bcd))
    out["gain_bcd_max"] = _fmt_gain(max(gains_bcd))
    return out


def table_cells(data: dict) -> list[list[str]]:
    """The calibration table's cells, row by row, as ``mean +- std`` over seeds."""
    cells = []
    for row in data["results"]["synth_to_real"]:
        cells.append(
            [
                f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f}"
                for vals in (data["results"][s][row] for s in data["results"])
            ]
        )
    return cells


def flatten(record: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to the values of a record, as text (the command and machine left out)."""
    out: dict[str, str] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = str(value)
    return out


def shares_of_teacher(data: dict) -> dict[str, str]:
    """How the target-distilling paradigms (b)-(d) stand to their teacher: their mean over
    seeds and paradigms as a share of the teacher's (the lower and the higher scenario), and
    the largest gap between two of their means."""
    shares, spreads = [], []
    for rows in data["results"].values():
        means = [statistics.mean(rows[f"DAKD ({p})"]) for p in "bcd"]
        shares.append(statistics.mean(means) / statistics.mean(rows["teacher (shipped)"]))
        spreads.append(max(means) - min(means))
    return {
        "share_bcd_min": f"{min(shares):.2f}",
        "share_bcd_max": f"{max(shares):.2f}",
        "spread_bcd_within": f"{math.ceil(max(spreads) * 10) / 10:.1f}",
    }


def logit_grid_changes(record: dict, data: dict) -> dict[str, tuple[str, str, str]]:
    """``distill.resolution: logits`` against ``image`` per (scenario, row): the image value
    (calibration.json's seed 0), the logits value and the change (of the unrounded values), as
    docs/gpu.md prints them; a recorded change agrees with the two values it is between."""
    logits = record["distill_resolution_logits"]["miou"]
    recorded = record["distill_resolution_logits"]["change"]
    out = {}
    for scenario, rows in data["results"].items():
        for row, values in rows.items():
            moved, change = logits[scenario].get(row), recorded[scenario].get(row, "=")
            if moved is not None:
                assert abs(float(moved) - values[0] - float(change)) <= 0.01, (scenario, row)
            out[scenario, row] = (f"{values[0]:.2f}", moved or f"{values[0]:.2f}", change)
    return out


def step_ms(setting: str, key: str = "step_ms") -> float:
    """The H200's recorded step of a speed setting (the paper's recipe)."""
    rows = [r for r in _load(STEP_TIMES) if r["device"] == "NVIDIA H200"]
    return next(r[key] for r in rows if r["setting"] == setting)


def dry_run_cost() -> dict[str, str]:
    """The cost docs/cluster.md shows the dry run printing: 50000-step runs at the H200's bf16
    step, waves of 4, 3 and 18 runs each trained at once."""
    hours = 50000 * step_ms("bf16") / 3.6e6
    out = {"step_ms": f"{step_ms('bf16'):.1f}", "wave_h": f"{hours:.1f}"}
    for name, runs in (("wave1", 4), ("wave2", 3), ("trials", 18)):
        out[f"{name}_gpu_h"] = f"{runs * hours:.1f}"
    out["total_gpu_h"] = f"{25 * hours:.1f}"
    out["total_h"] = f"{3 * hours:.1f}"
    return out


def student_search_figures(record: dict) -> dict[str, str]:
    """What docs/student-search.md derives from the front it measured."""
    search = record["student_search"]
    front = {k: {f: float(v) for f, v in row.items()} for k, row in search["front"].items()}
    small = front["DRN-D-22 w0.125 os2, output+feature"]
    wide = front["DRN-D-22 w0.5 os2, output+feature"]
    narrow = front["DRN-D-22 w0.0625 os8, output+feature"]
    memory = [row["peak_mib"] for row in front.values()]
    teacher = float(search["teacher"])
    w025 = front["DRN-D-22 w0.25 os2, output+feature"]["latency_ms"]
    return {
        "front_size": str(len(front)),
        "others": str(int(search["trials"]) - len(front)),
        "memory_span": f"{max(memory) / min(memory):.1f}",
        "memory_min": f"{min(memory):.0f}",
        "memory_max": f"{max(memory):.0f}",
        "small_share_pct": f"{100 * small['miou'] / teacher:.1f}",
        "wide_gain": f"{wide['miou'] - small['miou']:.2f}",
        "narrow_loss": f"{small['miou'] - narrow['miou']:.1f}",
        "latency_moved_pct": f"{100 * (float(search['w025_os2_latency_other_run_ms']) / w025 - 1):.0f}",
        "os8_cost": f"{float(search['w0125_os2_output_miou']) - front['DRN-D-22 w0.125 os8, output']['miou']:.1f}",
        "os8_mib": f"{front['DRN-D-22 w0.125 os2, output+feature']['peak_mib'] - front['DRN-D-22 w0.125 os8, output']['peak_mib']:.0f}",
    }


def proxy_miou() -> dict[str, str]:
    """The shipped students' proxy-task mIoU at the end of their pretraining, by width."""
    manifest = _load(MANIFEST)
    out = {}
    for name, entry in manifest.items():
        if name.startswith("drn_d_22-") and name.endswith("-os2.pt"):
            out[str(entry["network"]["width"])] = f"{entry['history'][-1]['miou']:.1f}"
    return out


def figures() -> dict[str, str]:
    """Every figure the docs may quote, by name: ``measurements.*``, ``calibration.*``,
    ``dry_run.*``, ``student_search.*``, ``proxy_miou.*`` and ``step_times.*``."""
    record = _load(RECORD)
    calibration = _load(CALIBRATION)
    out = {f"measurements.{k}": v for k, v in flatten(record).items()}
    out.update({f"calibration.{k}": v for k, v in calibration_figures(calibration).items()})
    out.update({f"calibration.{k}": v for k, v in shares_of_teacher(calibration).items()})
    heldout = _load(CALIBRATION_HELDOUT)
    out.update({f"heldout.{k}": v for k, v in calibration_figures(heldout).items()})
    out.update({f"dry_run.{k}": v for k, v in dry_run_cost().items()})
    out.update({f"student_search.{k}": v for k, v in student_search_figures(record).items()})
    out.update({f"proxy_miou.{k}": v for k, v in proxy_miou().items()})
    for setting in ("exact", "fast", "bf16", "compile"):
        out[f"step_times.{setting}"] = f"{step_ms(setting):.1f}"
        out[f"step_times.{setting}_int"] = f"{step_ms(setting):.0f}"
    changes = [
        abs(float(c))
        for _, _, c in logit_grid_changes(record, _load(CALIBRATION_R3)).values()
        if c != "="
    ]
    out["logits.change_min"] = f"{min(changes):.2f}"
    out["logits.change_max"] = f"{max(changes):.2f}"
    return out


N = r"([-+]?\d+(?:\.\d+)?)"  # a number as quoted
T = r"(\d+ min \d+ s)"  # a wall time as quoted


def m(group: str, *keys: str) -> tuple[str, ...]:
    """The names of figures of one record entry: ``m("bench.scaling", "wall_s")``."""
    return tuple(f"measurements.{group}.{k}" for k in keys)


def c(*keys: str) -> tuple[str, ...]:
    return tuple(f"calibration.{k}" for k in keys)


def h(*keys: str) -> tuple[str, ...]:
    return tuple(f"heldout.{k}" for k in keys)


#: (file, phrase with one group per figure, the figures' names), grouped by file. Whitespace in
#: a phrase matches any run of whitespace (a line break included).
QUOTES: list[tuple[str, str, tuple[str, ...]]] = [
    # README.md: the main job, the test suite, the calibration
    ("README.md", rf"the first command took \*\*{T}\*\*", m("main_job", "wall")),
    (
        "README.md",
        rf"the student-DA stage \({N} s\) and the fair baseline \({N} s after it\), the "
        rf"teacher's outputs on both domains stored once \({N} s,",
        m("main_job", "student_da_s", "fair_baseline_s", "teacher_outputs_s"),
    ),
    (
        "README.md",
        rf"best trial {N}, {N} over the fair baseline {N} \(student-DA trained on for the "
        rf"trials' steps\), {N} over student-DA {N}",
        m(
            "main_job.summary",
            "best_trial",
            "gain_over_fair_baseline",
            "fair_baseline",
            "gain_over_student_da",
            "student_da",
        ),
    ),
    (
        "README.md",
        rf"beats the fair baseline by {N}\*\*: the paper's weights with paradigm \(d\), \(c\) "
        rf"then \(b\), at {N}, {N} of the shipped teacher's {N}",
        m(
            "main_job.summary",
            "gain_over_fair_baseline_rounded",
            "best_trial",
            "share_of_teacher",
            "teacher",
        ),
    ),
    (
        "README.md",
        rf"next come \(b\) with a small\s+lambda_pseudoT at {N} and \(c\) at {N} \(stopped at 100",
        m("main_job.summary", "second_b", "c_stopped_at_100"),
    ),
    (
        "README.md",
        rf"suite \({N} tests; `bash \.ci/run`, lint included, took {T}",
        m("test_suite", "tests", "wall"),
    ),
    (
        "README.md",
        rf"DAKD \(b\)-\(d\) beat the fair baseline in every seed, by {N} to {N}",
        c("gain_bcd_min", "gain_bcd_max"),
    ),
    (
        "README.md",
        rf"by {N} to {N} on the two seeds it never used",
        h("gain_bcd_min", "gain_bcd_max"),
    ),
    # sweeps/README.md
    ("sweeps/README.md", rf"\| 8 \| {T} from a fresh clone \|", m("main_job", "wall")),
    ("sweeps/README.md", rf"\| 2 \| {T} from a fresh clone \|", m("quickstart", "wall")),
    (
        "sweeps/README.md",
        rf"two at a time: {N} s with reuse against {N} s without",
        m("bench.actor_reuse", "with_s", "without_s"),
    ),
    # docs/guide.md
    ("docs/guide.md", rf"its fair baseline, {T} in a fresh clone \|", m("quickstart", "wall")),
    (
        "docs/guide.md",
        rf"in every seed, {N} to {N} over the fair baseline",
        c("gain_bcd_min", "gain_bcd_max"),
    ),
    (
        "docs/guide.md",
        rf"lands at {N}-{N} of its teacher\*\*",
        c("share_bcd_min", "share_bcd_max"),
    ),
    ("docs/guide.md", rf"ratio trainer/hand = {N}", m("bench.train_step", "ratio_trainer_hand")),
    (
        "docs/guide.md",
        rf"ratio served/consumption\s+= {N}",
        m("bench.train_step", "ratio_served_consumption"),
    ),
    (
        "docs/guide.md",
        rf"live {N} ms, cached {N} ms, \*\*ratio {N}\*\*",
        m("bench.teacher_cache", "live_ms", "cached_ms", "ratio"),
    ),
    (
        "docs/guide.md",
        rf"On 2 idle cores:\s+{N} on the quickstart's one-minute trials",
        m("bench.sweep_overhead", "efficiency_quickstart"),
    ),
    (
        "docs/guide.md",
        rf"{N} with 3-minute trials \({N}x\) and {N} with 4-minute trials \({N}x\)",
        m("bench.sweep_overhead", "efficiency_3min", "speedup_3min", "efficiency_4min")
        + m("bench.sweep_overhead", "speedup_4min"),
    ),
    (
        "docs/guide.md",
        rf"on 2 cores {N} ms against {N} ms a step, {N}x more steps per second",
        m("bench.data_loading", "in_loop_wait_ms", "prefetch_wait_ms", "speedup"),
    ),
    (
        "docs/guide.md",
        rf"\(with one\s+thread per trial {N}\)",
        m("bench.teacher_cache", "ratio_one_thread"),
    ),
    # docs/results.md (its table: test_calibration_tables_are_calibration_json)
    (
        "docs/results.md",
        rf"by {N} to {N} \(synthetic-to-real\) and {N} to {N} \(real-to-real\) for its best "
        rf"paradigm, by {N} / {N} on average for \(c\) and {N} / {N} for \(d\)",
        tuple(
            f"calibration.{s}.{k}"
            for s, k in (
                ("synth_to_real", "best_gain_min"),
                ("synth_to_real", "best_gain_max"),
                ("real_to_real", "best_gain_min"),
                ("real_to_real", "best_gain_max"),
                ("synth_to_real", "gain_c_mean"),
                ("real_to_real", "gain_c_mean"),
                ("synth_to_real", "gain_d_mean"),
                ("real_to_real", "gain_d_mean"),
            )
        ),
    ),
    (
        "docs/results.md",
        rf"are within {N} of each other and well above source distillation",
        c("spread_bcd_within"),
    ),
    (
        "docs/results.md",
        rf"The distilled student lands at {N}-{N} of\s+its teacher",
        c("share_bcd_min", "share_bcd_max"),
    ),
    (
        "docs/results.md",
        rf"the teacher leads\s+student-DA by {N} / {N} on average",
        c("synth_to_real.teacher_lead", "real_to_real.teacher_lead"),
    ),
    # docs/datasets.md
    (
        "docs/datasets.md",
        rf"resizing it takes about {N} s on one CPU core, so the paper's 2 \+ 2 images cost "
        rf"about {N} s a step",
        m("real_data_decode", "pair_s", "paper_step_s"),
    ),
    (
        "docs/datasets.md",
        rf"the step waited {N} ms for data in the loop and {N} ms with prefetching "
        rf"\({N}x more steps per second\); against a 50 ms step 2 cores cannot decode fast "
        rf"enough \({N} ms wait; {N}x\)",
        m("bench.data_loading", "in_loop_wait_ms", "prefetch_wait_ms", "speedup")
        + m("bench.data_loading", "step_50ms_wait_ms", "speedup_50ms"),
    ),
]
QUOTES += [
    # docs/teacher-cache.md (its outputs: OUTPUTS; its sizes: TABLES)
    (
        "docs/teacher-cache.md",
        rf"live\s+{N} ms, cached {N} ms, \*\*ratio {N}\*\*",
        m("bench.teacher_cache", "one_thread_live_ms", "one_thread_cached_ms", "ratio_one_thread"),
    ),
    (
        "docs/teacher-cache.md",
        rf"The cache removes {N}% of a step's\s+FLOPs \(ratio {N}\), and exactly the teacher's "
        rf"time \(the difference, {N} ms,",
        m("bench.teacher_cache", "flops_removed_pct", "flops_ratio", "teacher_ms"),
    ),
    (
        "docs/teacher-cache.md",
        rf"the teacher's\s+{N} GFLOP take {N} ms, the student's, the discriminators' and the "
        rf"losses' {N} GFLOP take {N} ms\.",
        m("bench.teacher_cache", "teacher_gflop", "teacher_ms", "rest_gflop", "rest_ms"),
    ),
    (
        "docs/teacher-cache.md",
        rf"puts {N}% of it in the 0\.26M-parameter",
        m("bench.teacher_cache", "small_conv_share_pct"),
    ),
    (
        "docs/teacher-cache.md",
        rf"never loads the teacher: {N} MB less private memory.*?\(RSS\s+peak {N} MB against "
        rf"{N} MB\)",
        m("bench.teacher_cache", "private_mb_saved", "rss_cached_mb", "rss_live_mb"),
    ),
    (
        "docs/teacher-cache.md",
        rf"and still ends {N} s sooner",
        m("bench.teacher_cache_main_job", "saved_s"),
    ),
    # docs/performance.md (its outputs: OUTPUTS)
    (
        "docs/performance.md",
        rf"kept both busy \(about {N} s in all\)",
        m("bench.scaling", "wall_s"),
    ),
    (
        "docs/performance.md",
        rf"The all-reduce of {N} MiB over loopback",
        m("bench.scaling", "allreduce_mib"),
    ),
    (
        "docs/performance.md",
        rf"the 1-worker CPU step\s+took {N} ms \(one block of 2 steps",
        m("bench.scaling", "bf16_channels_last_step_ms"),
    ),
    (
        "docs/performance.md",
        rf"reporting with a checkpoint {N} s, MLflow metrics\s+{N} s per trial, the final "
        rf"artifacts \(prediction panel, weights, confusion matrix\) {N} s, the\s+trial's MLflow "
        rf"run and params {N} s",
        m("bench.sweep_overhead", "report_s", "metrics_s", "artifacts_s", "start_s"),
    ),
    (
        "docs/performance.md",
        rf"a fixed one of about {N} s a sweep.*?`ray\.init` {N} s and the driver's MLflow\s+"
        rf"experiment and parent run {N} s .*? importing the trainer there about {N} s, the "
        rf"result tables and plots at the\s+end {N} s, `ray\.shutdown` {N} s\.",
        m("bench.sweep_fixed_cost", "fixed_s", "ray_init_s", "mlflow_parent_s", "trial_start_s")
        + m("bench.sweep_fixed_cost", "tables_s", "ray_shutdown_s"),
    ),
    (
        "docs/performance.md",
        rf"hence {N};\s+against trials of 4 minutes it is an eighth, hence {N};",
        m("bench.sweep_overhead", "efficiency_quickstart", "efficiency_4min"),
    ),
    (
        "docs/performance.md",
        rf"the bench measured {N} \(wall {N} s against {N} s for the loop, {N}x\), and with\s+"
        rf"3-minute trials \(450 steps\) {N} \({N} s against {N} s, {N}x\)",
        m("bench.sweep_overhead", "efficiency_2min", "wall_2min_s", "loop_2min_s", "speedup_2min")
        + m("bench.sweep_overhead", "efficiency_3min", "wall_3min_s", "loop_3min_s")
        + m("bench.sweep_overhead", "speedup_3min"),
    ),
    (
        "docs/performance.md",
        rf"cost each about {N}% \({N} s against {N} s alone",
        m("bench.sweep_overhead", "two_at_once_cost_pct", "two_at_once_s", "alone_s"),
    ),
    (
        "docs/performance.md",
        rf"kept every value exactly once \({N} of {N} metrics, {N} of {N} artifacts",
        m("bench.tracking_load", "metrics", "metrics", "artifacts", "artifacts"),
    ),
    (
        "docs/performance.md",
        rf"costs a trial less per step \({N} ms\s+against {N} ms\).*?\(p99\s+{N} ms\)\. The "
        rf"server is one process \(`--workers 1`\) that serves all 16 writers' {N} requests\s+"
        rf"\(about {N} a second here\), so each call waits behind the others \(p50 {N} ms\)",
        m("bench.tracking_load", "sqlite_step_mean_ms", "server_step_mean_ms")
        + m("bench.tracking_load", "sqlite_step_p99_ms", "server_requests")
        + m("bench.tracking_load", "server_requests_per_s", "server_call_p50_ms"),
    ),
    (
        "docs/performance.md",
        rf"on an H200 it made the paper's step slower \({N} ms against {N} ms\)",
        ("step_times.compile", "step_times.bf16"),
    ),
    # docs/gpu.md (its tables: test_gpu_tables_are_their_records; its output: OUTPUTS)
    (
        "docs/gpu.md",
        r"A step is ([\d,]+) GFLOP \(([\d,]+) with the cache\), so the best setting ran at about "
        rf"{N} TFLOP/s, {N}%",
        m("bench.gpu_step_h200", "gflop_live", "gflop_cached", "tflops_best")
        + m("bench.gpu_step_h200", "share_of_bf16_peak_pct"),
    ),
    (
        "docs/gpu.md",
        rf"The profile of the bf16 step \({N} ms of GPU\s+time\) put the networks' convolutions "
        rf"at {N}% and the rest elsewhere: `aten::copy_` {N}% \(some {N}\s+copies a step: casts "
        rf"and layout conversions\), pageable host-to-device copies of the batch {N}%,\s+"
        rf"`\.contiguous\(\)` clones {N}%",
        m("bench.gpu_step_h200", "profile_gpu_ms", "profile_conv_pct", "profile_copy_pct")
        + m("bench.gpu_step_h200", "profile_copies", "profile_h2d_pct", "profile_contiguous_pct"),
    ),
    (
        "docs/gpu.md",
        rf"\(the first table: {N} against {N} ms with float32",
        ("step_times.exact_int", "step_times.fast_int"),
    ),
    (
        "docs/gpu.md",
        rf"On the H200, 4 ahead left {N} ms of waiting\s+at a {N} ms step on 16 cores, 8 ahead "
        rf"{N} ms\.",
        m("bench.gpu_step_h200", "prefetch_4_wait_ms", "prefetch_step_ms", "prefetch_8_wait_ms"),
    ),
    (
        "docs/gpu.md",
        rf"Every DAKD row is lower, by {N} to {N} mIoU",
        ("logits.change_min", "logits.change_max"),
    ),
    (
        "docs/gpu.md",
        rf"--processes 1,2`, {T}; one block of two steps",
        m("bench.gpu_step_cpu", "wall"),
    ),
    (
        "docs/gpu.md",
        rf"a float32 `torch\.mm` \({N} TFLOP/s on these busy cores",
        m("bench.gpu_step_cpu", "mm_peak_tflops"),
    ),
    # docs/student-search.md (its front: TABLES)
    (
        "docs/student-search.md",
        rf"proxy-task mIoU {N}, {N},\s+{N} and {N}\)",
        tuple(f"proxy_miou.{w}" for w in ("0.0625", "0.125", "0.25", "0.5")),
    ),
    (
        "docs/student-search.md",
        rf"synthetic-to-real scenario \(target mIoU {N}\), its outputs cached\s+once; {N} trials",
        m("student_search", "teacher", "trials"),
    ),
    (
        "docs/student-search.md",
        rf"The front: {N} of {N} trials, spanning {N}x in memory \({N} to {N} MiB\)\. Of the "
        rf"other {N}, {N} were",
        ("student_search.front_size",)
        + m("student_search", "trials")
        + tuple(f"student_search.{k}" for k in ("memory_span", "memory_min", "memory_max"))
        + ("student_search.others",)
        + m("student_search", "stopped_dominated"),
    ),
    (
        "docs/student-search.md",
        rf"The sweep took\s+{T} from a fresh clone .*? and {T} with\s+the scenes already rendered",
        m("student_search", "wall_fresh_clone", "wall_scenes_rendered"),
    ),
    (
        "docs/student-search.md",
        rf"it moved by up to {N}% between the two runs \({N} against {N} ms for w0\.25",
        ("student_search.latency_moved_pct",)
        + ("measurements.student_search.front.DRN-D-22 w0.25 os2, output+feature.latency_ms",)
        + m("student_search", "w025_os2_latency_other_run_ms"),
    ),
    (
        "docs/student-search.md",
        rf"already reaches {N}% of\s+the teacher's {N}; four times its memory buys {N} mIoU\.",
        ("student_search.small_share_pct",)
        + m("student_search", "teacher")
        + ("student_search.wide_gain",),
    ),
    (
        "docs/student-search.md",
        rf"the narrowest student\s+loses {N} mIoU, and output stride 8 costs the w0\.125 student "
        rf"{N} mIoU for {N} MiB less \(output\s+level only: {N} against {N}\)",
        ("student_search.narrow_loss", "student_search.os8_cost", "student_search.os8_mib")
        + ("measurements.student_search.front.DRN-D-22 w0.125 os8, output.miou",)
        + m("student_search", "w0125_os2_output_miou"),
    ),
    # docs/cluster.md: the dry run's cost, from the recorded H200 step
    (
        "docs/cluster.md",
        rf"step: {N} ms \(NVIDIA H200, measured by bench/gpu_step\.py \(torch 2\.11\+cu130",
        ("dry_run.step_ms",),
    ),
    (
        "docs/cluster.md",
        rf"wave 1: 4 run\(s\) x 50000 steps x 1 GPU, 4 at once: {N} GPU-h, {N} h\s+.*?wave 2: 3 "
        rf"run\(s\) x 50000 steps x 1 GPU, 3 at once: {N} GPU-h, {N} h\s+trials: 18 run\(s\) "
        rf"x 50000 steps .*?: {N} GPU-h, {N} h\s+total: {N} GPU-hours, {N} hours",
        tuple(
            f"dry_run.{k}"
            for k in ("wave1_gpu_h", "wave_h", "wave2_gpu_h", "wave_h", "trials_gpu_h", "wave_h")
        )
        + ("dry_run.total_gpu_h", "dry_run.total_h"),
    ),
]


def _phrase(pattern: str) -> re.Pattern:
    return re.compile(pattern.replace(" ", r"\s+"), re.DOTALL)


@pytest.mark.parametrize("path,pattern,names", QUOTES, ids=[f"{q[0]}:{q[2][0]}" for q in QUOTES])
def test_quoted_figures_are_the_recorded_ones(path, pattern, names):
    known = figures()
    text = (ROOT / path).read_text(encoding="utf-8")
    found = list(_phrase(pattern).finditer(text))
    assert found, f"{path} no longer has the phrase that quotes {', '.join(names)}: {pattern!r}"
    for match in found:
        quoted = list(zip(names, match.groups()))
        expected = [(name, known[name]) for name in names]
        assert quoted == expected, f"{path} quotes {quoted}; the record holds {expected}"


#: (file, the record entry whose ``output`` the file reproduces in a fenced block).
OUTPUTS = [
    ("docs/performance.md", "bench.scaling"),
    ("docs/performance.md", "bench.sweep_overhead"),
    ("docs/performance.md", "bench.tracking_load"),
    ("docs/teacher-cache.md", "bench.teacher_cache"),
    ("docs/teacher-cache.md", "bench.teacher_cache_main_job"),
    ("docs/gpu.md", "bench.gpu_step_cpu"),
]


def fenced_blocks(text: str) -> list[list[str]]:
    """The non-blank lines of each fenced block of a Markdown text."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is not None:
                blocks.append(current)
            current = [] if current is None else None
        elif current is not None and line.strip():
            current.append(line.rstrip())
    return blocks


@pytest.mark.parametrize("path,entry", OUTPUTS, ids=[f"{p}:{e}" for p, e in OUTPUTS])
def test_bench_outputs_are_the_recorded_ones(path, entry):
    record = _load(RECORD)
    for key in entry.split("."):
        record = record[key]
    want = [line.rstrip() for line in record["output"] if line.strip()]
    blocks = fenced_blocks((ROOT / path).read_text(encoding="utf-8"))
    near = [b for b in blocks if want[0] in b or want[-1] in b]
    assert near, f"{path}: no block shows the output of {entry} ({RECORD}) from {want[0]!r}"
    for block in near:
        start = block.index(want[0]) if want[0] in block else 0
        got = block[start : start + len(want)]
        wrong = [(g, w) for g, w in zip(got, want) if g != w] or (got != want and [got[-1:]])
        assert not wrong, f"{path}: {entry} shows {wrong[0][0]!r}, {RECORD} has {wrong[0][1]!r}"


def table_rows(path: str, header: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table of a file whose header starts so."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _records_table(path, header, rows: dict, source: str):
    """A table's rows, by their first cell, against ``rows``: the other cells in order."""
    got = {row[0]: row[1:] for row in table_rows(path, header)}
    want = {k: list(v.values()) if isinstance(v, dict) else v for k, v in rows.items()}
    assert got == want, f"{path}: the table {header!r}... is not {source}: {got} != {want}"


def test_student_search_front_is_its_record():
    front = _load(RECORD)["student_search"]["front"]
    _records_table("docs/student-search.md", "| student | mIoU", front, RECORD)


def test_teacher_cache_sizes_are_their_record():
    sizes = _load(RECORD)["bench"]["teacher_cache_sizes"]["rows"]
    _records_table("docs/teacher-cache.md", "| dataset | images", sizes, RECORD)


#: docs/gpu.md's first table: its rows' settings in dakd/runtime/step_times.json.
H200_ROWS = {
    "as the spec ran it (deterministic, fp32)": "exact",
    "`deterministic: false`, `cudnn_benchmark: true`": "fast",
    "+ `amp: bf16`, `channels_last: true`": "bf16",
    "+ `compile: true`": "compile",
}


def test_gpu_tables_are_their_records():
    record = _load(RECORD)
    peak = record["bench"]["gpu_step_h200"]["peak_gb"]
    want = {
        row: [f"{step_ms(s):.1f} ms", f"{step_ms(s, 'cached_step_ms'):.1f} ms", f"{peak[s]} GB"]
        for row, s in H200_ROWS.items()
    }
    _records_table("docs/gpu.md", "| setting | step, live teacher", want, STEP_TIMES)
    changes = logit_grid_changes(record, _load(CALIBRATION_R3))
    rows = table_rows("docs/gpu.md", "| row | synth_to_real `image`")
    assert len(rows) == len(changes) // 2, "docs/gpu.md: the logit-grid table misses rows"
    for row in rows:
        want = [*changes["synth_to_real", row[0]], *changes["real_to_real", row[0]]]
        assert row[1:] == want, f"docs/gpu.md: {row} is not {want} ({CALIBRATION_R3}, {RECORD})"


def _unmeasured(entry: dict, name: str, measured: bool) -> list[str]:
    """The figures of a record entry with no command and machine on it or above it."""
    measured = measured or bool(entry.get("command") and entry.get("machine"))
    out = []
    for key, value in entry.items():
        if isinstance(value, dict):
            out += _unmeasured(value, f"{name}.{key}", measured)
        elif not measured:
            out.append(f"{name}.{key}")
    return out


def test_every_recorded_figure_names_how_it_was_measured():
    record = _load(RECORD)
    missing = [f for name, entry in record.items() for f in _unmeasured(entry, name, False)]
    assert not missing, f"{RECORD}: no command and machine for {', '.join(missing)}"


@pytest.mark.parametrize("path", ["docs/guide.md", "docs/results.md"])
def test_calibration_tables_are_calibration_json(path):
    data = _load(CALIBRATION)
    text = (ROOT / path).read_text(encoding="utf-8")
    header = text.index("| row | synth")
    rows = [line for line in text[header:].splitlines()[2:] if line.startswith("|")]
    expected = table_cells(data)
    assert len(rows) >= len(expected), f"{path}: the calibration table has fewer rows than the data"
    for line, want in zip(rows, expected):
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        # a row without spread (the shipped teacher, one file for every seed) prints no std
        got = [c if "+-" in c else f"{c} +- 0.0" for c in cells]
        assert got == want, f"{path}: {line!r} is not {want} ({CALIBRATION})"


def test_calibration_md_is_calibration_json():
    data = _load(CALIBRATION)
    text = (DOCS / "calibration.md").read_text(encoding="utf-8")
    assert data["table"].strip() in text
    rest = text.replace(data["table"].strip(), "")
    assert not re.search(r"\d", rest), (
        f"docs/calibration.md has figures outside the table: {rest!r}"
    )


def test_calibration_heldout_md_is_its_json():
    data = _load(CALIBRATION_HELDOUT)
    assert data["seeds"] == [5, 6] and "--seeds 5 6" in data["command"]
    text = (DOCS / "calibration-heldout.md").read_text(encoding="utf-8")
    assert data["table"].strip() in text


def test_heldout_targets_in_the_guide_are_calibration_heldout_json():
    """The guide's table of targets on seeds 5 and 6: every cell of differences is the JSON's,
    per seed, and "met" says what the per-seed values say."""
    data = _load(CALIBRATION_HELDOUT)
    targets = {(t["scenario"], t["target"]): t for t in data["targets"]}
    text = (DOCS / "guide.md").read_text(encoding="utf-8")
    header = text.index("| target (seeds 5, 6) |")
    rows = [line for line in text[header:].splitlines()[2:] if line.startswith("|")]
    assert len(rows) >= 7
    for line in rows:
        name, synth, synth_met, real, real_met = (c.strip() for c in line.strip("|").split("|"))
        for scenario, cell, met in (
            ("synth_to_real", synth, synth_met),
            ("real_to_real", real, real_met),
        ):
            key = next(k for k in targets if k[0] == scenario and k[1].startswith(name))
            want = ", ".join(_fmt_gain(v) for v in targets[key]["per_seed"])
            assert cell == want, f"docs/guide.md: {name} ({scenario}) {cell!r} != {want!r}"
            bound = re.search(r"\+ (\d+(?:\.\d+)?)$", key[1])  # "... >= fair baseline + 2"
            need = float(bound.group(1)) if bound else 0.0
            strict = " < " in key[1]
            misses = [
                s
                for s, v in zip(data["seeds"], targets[key]["per_seed"])
                if (v <= need if strict else v < need)
            ]
            assert (not misses) == targets[key]["every_seed"], key
            if not misses:
                assert met == "every seed", f"{name} ({scenario}): met in every seed, not {met!r}"
            elif len(misses) == len(data["seeds"]):
                assert met == "no", f"{name} ({scenario}): met in no seed, not {met!r}"
            else:
                assert met == f"not seed {misses[0]}", f"{name} ({scenario}): {met!r}"
