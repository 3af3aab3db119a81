"""One call on an H100/H200: correctness on CUDA, then `bench`; writes a dated report.

On the GPU machine, from the repository root (needs torch, transformers, h5py, numpy, pytest and, for
the fp8 sections, torchao >= 0.17; nvidia-ml-py for power; the package need not be installed; give the
call about 540 s). Without network, bring torchao as a wheel (it has no dependency pip would fetch):
`pip download --no-deps torchao==0.18.0 -d .whl` where there is network, then there

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 PYTHONPATH=src:$PYTHONPATH python3 benchmarks/gpu_check.py --out "$OUT"

Dry run on a CPU (same sections, tiny sizes, fp8 emulated):

    .venv/bin/python benchmarks/gpu_check.py --device cpu --model tiny --out /tmp/gpu_check

The check, in order of importance (what was measured before, bf16 against HF at 817 seq/s and fp16 and
BERT-base, runs only when named with --sections):
- `fp8_headline`: BERT-large, 512, the MLPerf length mix, 128 x 2 micro-batches, everything built (fp8
  in the default layers, --fused_norm, compiled LAMB) against HF in the same process, profiled
  (`<out>/profile_fp8_headline/`: where the step's time goes, GEMMs against attention);
- `fp8_<layers>` and `fp8_<recipe>_<layers>`: fp8 against this project's own bf16 step in the same
  process (`--compare bf16`), one section per converted-layer set and recipe;
- `fused_norm_bf16`: --fused_norm against the plain bf16 step, same process;
- LAMB's update alone (multi-tensor against compiled, section `lamb`), the GPU tests (`pytest -m gpu`:
  fp8, fused norm, step, LAMB), short fp8 and bf16 training runs whose loss must fall;
- then what is still owed from earlier: one encoder layer compiled several ways (`layer`,
  layer_bench.py) and HF compiled as the peer.
`--experiments` runs, instead of the check, variants of the bf16 headline (EXPERIMENTS: eager LAMB,
the fused LayerNorm kernels, larger micro-batches, eager model, max-autotune compilation, CUDA graphs)
against a baseline in the same call and writes `<out>/experiments_<device>_<date>.md`.

Every section runs in its own process with a timeout taken from one overall budget (default
480 s); a failure or timeout is recorded in the report and the next section runs. The report
(`<out>/throughput_<device>_<date>.md`, plus the raw JSON) is rewritten after every section and
printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import layer_bench  # noqa: E402  (beside this script)
from gpu_sections import SECTIONS  # noqa: E402  (beside this script: what runs inside a section's own process)

from bert_pretrain.bench.report import PEER_NAMES  # noqa: E402  (the package need not be installed)
from bert_pretrain.bench.step_profile import format_profile  # noqa: E402


def _bench_plan(args) -> list[tuple[str, list[str], int]]:
    """(name, bench arguments, seconds it may need at most) in order of importance; the first ones make the
    default check (FP8_CHECK), the others run when named with --sections.

    BERT-large at 512 with MLPerf lengths in 128 x 2 micro-batches (256 sequences per LAMB update), the
    fastest measured bf16 configuration (817 seq/s on an H200, 8.5% faster than 64 x 4); HF needs about
    90 GB for it (an H100 times this project alone). On the CPU: the tiny model, small batches.
    """
    def profile(name):
        return ["--profile", str(Path(args.out) / f"profile_{name}")]

    cpu = args.device == "cpu"
    base = (["--model", args.model, "--seq", "128", "--batch", "8", "--accumulation", "2", "--steps", "4",
             "--warmup", "1", "--rounds", "2"] if cpu else LARGE_128)
    fused = [] if cpu else ["--fused_norm"]  # Triton's kernels need a GPU
    plan = [
        # the targets: >= 1,000 seq/s and >= 2.5x HF with everything built; the profile says whether
        # the GEMMs or attention stand between the step and 1,000
        ("fp8_headline", [*base, "--precision", "fp8", *fused, "--compare", "hf", *profile("fp8_headline")], 240),
        # fp8 against bf16 in one process, per converted-layer set: torchao's H100 heuristics favour qkv and
        # mlp1 at hidden 1024 (the default), all four is the other candidate
        ("fp8_qkv_mlp1", [*base, "--precision", "fp8", "--fp8_layers", "qkv,mlp1", "--compare", "bf16"], 150),
        ("fp8_all", [*base, "--precision", "fp8", "--fp8_layers", "all", "--compare", "bf16"], 150),
        # what --fused_norm buys on its own (never timed on a GPU before)
        ("fused_norm_bf16", [*base, "--precision", "bf16", "--fused_norm", "--compare", "bf16"], 150),
        # the more accurate recipes: rowwise kernels are expected slower at K = 1024 (torchao's heuristic
        # converts no BERT-large layer for rowwise)
        ("fp8_rowwise_all", [*base, "--precision", "fp8", "--fp8_recipe", "rowwise", "--fp8_layers", "all",
                             "--compare", "bf16"], 150),
        ("fp8_rowwise_with_gw_hp_all", [*base, "--precision", "fp8", "--fp8_recipe", "rowwise_with_gw_hp",
                                        "--fp8_layers", "all", "--compare", "bf16"], 150),
        # owed: HF compiled as the peer (its whole 24-layer model compiles: long)
        ("large512_bf16_hf_compiled", [*base, "--precision", "bf16", "--compare", "hf", "--hf_compile"], 300),
        # measured on 2026-11-26 (throughput_nvidia-h200_2026-11-26.md, speedup_nvidia-h200_2026-11-26.md)
        ("large512_bf16", [*base, "--precision", "bf16", "--compare", "hf", *profile("large512_bf16")], 200),
        ("large512_fp16", [*base, "--precision", "fp16", "--compare", "hf"], 200),
        ("base128_bf16", ["--model", "base", "--seq", "128", "--batch", "256", "--accumulation", "2", "--steps", "10",
                          "--warmup", "3", "--precision", "bf16", "--compare", "hf"], 150),
    ]
    return [entry for entry in plan if not (cpu and entry[0] in GPU_ONLY)]


LARGE_128 = ["--model", "large", "--seq", "512", "--batch", "128", "--accumulation", "2", "--steps", "6",
             "--warmup", "2"]
LARGE = ["--model", "large", "--seq", "512", "--batch", "64", "--accumulation", "4", "--steps", "6", "--warmup", "2"]
FP8_CHECK = ("fp8_headline", "fp8_qkv_mlp1", "fp8_all", "fused_norm_bf16")  # first, then lamb and the GPU tests
FP8_LATER = ("fp8_rowwise_all", "fp8_rowwise_with_gw_hp_all", "large512_bf16_hf_compiled")  # after them
# --experiments: variants of the headline (BERT-large, 512, bf16, 256 sequences per update), this project only,
# each against the unchanged baseline run first in the same call. What each one tests:
EXPERIMENTS = {  # in the order of their expected value, so a short budget keeps the first ones
    "baseline": [],  # the headline configuration, for the ratios below
    "eager_lamb": ["--no_compile_optimizer"],  # LAMB's multi-tensor eager update: what compiling it buys
    "fused_norm": ["--fused_norm"],  # our Triton bias + dropout + residual + LayerNorm kernels, not Inductor's
    "micro128": ["--batch", "128", "--accumulation", "2"],  # larger GEMMs, fewer launches per update
    "autotune": ["--compile_mode", "max-autotune-no-cudagraphs"],  # Triton GEMM templates with fused epilogues
    # CUDA graphs need few distinct shapes: token counts rounded up to multiples of 512 (one padding segment)
    "cudagraphs": ["--compile_mode", "reduce-overhead", "--pad_to_multiple", "512"],
    "eager": ["--no_compile"],  # what regional compilation buys
    "micro256": ["--batch", "256", "--accumulation", "1"],  # the whole update in one micro-batch
}
# compile modes (the CPU dry run does not compile), Triton, the benches already measured on a GPU
GPU_ONLY = ("autotune", "cudagraphs", "fused_norm", "fused_norm_bf16", "large512_bf16_hf_compiled", "large512_bf16",
            "large512_fp16", "base128_bf16")


def _experiment_plan(args) -> list[tuple[str, list[str], int]]:
    """The EXPERIMENTS as bench sections; the baseline is profiled (where its time goes)."""
    profile = ["--profile", str(Path(args.out) / "profile_baseline")]
    if args.device == "cpu":  # the dry run: tiny sizes, no compilation
        base, names, limit = (["--model", args.model, "--seq", "128", "--batch", "8", "--accumulation", "2",
                               "--steps", "4", "--warmup", "1", "--rounds", "2"],
                              [n for n in EXPERIMENTS if n not in GPU_ONLY], {})
    else:
        base, names, limit = [*LARGE, "--precision", "bf16"], list(EXPERIMENTS), {"autotune": 300}
    return [(f"experiment_{name}", [*base, *EXPERIMENTS[name], *(profile if name == "baseline" else [])],
             limit.get(name, 150 if args.device != "cpu" else 120)) for name in names]


def _run(command: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run in a new process group, killed whole (compile workers too) when it outlives `timeout`."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr


def _last_json(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


class Report:
    """The Markdown report and raw JSON, rewritten whole after every section."""

    def __init__(self, out: Path, args):
        self.out, self.args = out, args
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.sections: list[dict] = []
        self.path = None

    def add(self, section: dict) -> None:
        self.sections.append(section)
        env = next((s["result"] for s in self.sections if s["name"] == "environment" and s.get("result")), {})
        device = re.sub(r"[^a-z0-9]+", "-", str(env.get("device_name") or self.args.device).lower()).strip("-")
        theme = "experiments" if self.args.experiments or self.args.sections else "throughput"
        stem = f"{theme}_{device or 'unknown'}_{self.started:%Y-%m-%d}"
        self.out.mkdir(parents=True, exist_ok=True)
        if self.path is None:  # named once; an earlier report of the same day is kept, not overwritten
            self.path = self.out / f"{stem}.md"
            if self.path.exists():
                self.path = self.out / f"{stem}_{self.started:%H%M%S}.md"
        stem = self.path.stem
        for path, text in ((self.path, self.markdown()), (self.out / f"{stem}.json", json.dumps(self.sections, indent=1))):
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text)
            partial.replace(path)

    def markdown(self) -> str:
        lines = [f"# GPU check: throughput and correctness ({self.started:%Y-%m-%d %H:%M} UTC)", "",
                 f"Command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`; budget {self.args.budget_s:.0f} s.", ""]
        for section in self.sections:
            lines += [f"## {section['name']}: {section['status']} ({section['seconds']:.0f} s)", ""]
            if section.get("command"):
                lines += [f"`{section['command']}`", ""]
            result = section.get("result")
            if result and "seq_per_s" in result:
                lines += _bench_table(result)
                if result.get("profile"):
                    lines += ["", format_profile(result["profile"])]
            elif result and "variants" in result:
                lines += layer_bench.format_layer(result)
            elif result:
                lines += ["```", json.dumps(result, indent=1)[:4000], "```"]
            if section.get("log"):
                lines += ["", "```", section["log"][-1500:], "```"]
            lines.append("")
        lines += _fp8_table(self.sections)
        lines += _experiment_table(self.sections)
        if self.args.device == "cpu" and any(s["name"].startswith("experiment_") for s in self.sections):
            lines += [f"On the CPU, bench compiles nothing by default, so `eager` and `eager_lamb` run the "
                      f"baseline's code; not run here (GPU only): {', '.join(GPU_ONLY)}.", ""]
        return "\n".join(lines)

    def all_ok(self) -> bool:
        return all(section["status"].startswith("ok") for section in self.sections)


def _experiment_table(sections: list[dict]) -> list[str]:
    """The experiments side by side, each against the baseline run in the same call."""
    runs = {s["name"].removeprefix("experiment_"): s for s in sections if s["name"].startswith("experiment_")}
    base = (runs.get("baseline", {}).get("result") or {}).get("seq_per_s")
    if not runs:
        return []
    lines = ["## Experiments against the baseline", "", "| experiment | what changes | seq/s | vs baseline | MFU | peak GB |",
             "|---|---|---:|---:|---:|---:|"]
    for name, section in runs.items():
        change, result = " ".join(EXPERIMENTS.get(name, [])) or "-", section.get("result")
        if not result or "seq_per_s" not in result:
            lines.append(f"| {name} | `{change}` | {section['status'].split(' (')[0].lower()} | | | |")
            continue
        ratio = f"{result['seq_per_s'] / base:.3f}x" if base else "-"
        mfu = f"{result['mfu']:.3f}" if result.get("mfu") is not None else "-"
        lines.append(f"| {name} | `{change}` | {result['seq_per_s']:,.0f} | {ratio} | {mfu} | {result['peak_mem_gb']:.1f} |")
    return lines + [""]


def _bench_table(r: dict) -> list[str]:
    def cell(key):
        value = r.get(key)
        return "-" if value is None else (f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}")

    keys = ("seq_per_s", "tokens_per_s", "tflops", "mfu", "peak_mem_gb", "power_w", "joules_per_seq", "loss")
    fp8 = f", fp8 {r['fp8_recipe']} {','.join(r['fp8_layers'])}" if r.get("fp8_layers") else ""
    peer = r.get("compare")
    if f"{peer}_seq_per_s" not in r:  # an experiment (or a peer that failed): this project alone
        failed = f"; {peer}: {r[f'{peer}_error']}" if r.get(f"{peer}_error") else ""
        return [f"seq/s {cell('seq_per_s')}, TFLOP/s {cell('tflops')}, MFU {cell('mfu')}, peak memory "
                f"{cell('peak_mem_gb')} GB; model {r['model']}, batch {r['batch']}x{r['accumulation']}, {r['precision']}"
                f"{fp8}, attention {r['attention']}, compile {r['compile']} {r.get('compile_mode') or ''}, "
                f"LAMB compiled {r.get('compile_optimizer')}, fused norm {r.get('fused_norm')}{failed}"]
    rows = [f"| measure | bert_pretrain | {PEER_NAMES[peer]} |", "|---|---:|---:|"]
    rows += [f"| {k} | {cell(k)} | {cell(peer + '_' + k)} |" for k in keys]
    rows += [f"| ratio (seq/s) | {cell('ratio')} | rounds {[round(x, 2) for x in r.get('ratio_rounds', [])]} |",
             f"| input pipeline seq/s | {cell('input_seq_per_s')} ({cell('input_ratio')}x the step) | |", "",
             f"model {r['model']}, seq {r['seq']}, batch {r['batch']}x{r['accumulation']}, {r['precision']}{fp8}, "
             f"fused norm {r.get('fused_norm')}, attention {r['attention']}, compile {r['compile']}, optimizer "
             f"{r['optimizer']} (compiled {r.get('compile_optimizer')}), mean real length {r['mean_length']:.1f}, "
             f"{r['steps']} timed steps each, peak {r.get('peak_tflops')} TFLOP/s, torch {r['torch']}, "
             f"transformers {r.get('transformers')}, power {r.get('power')}"]
    return rows


def _fp8_table(sections: list[dict]) -> list[str]:
    """The fp8 and fused-norm sections side by side, each against its peer in the same process, and the
    headline against the targets (>= 1,000 seq/s, >= 2.5x HF)."""
    runs = [(s["name"], s.get("result") or {}) for s in sections if s["name"] in FP8_CHECK + FP8_LATER]
    if not runs:
        return []
    lines = ["## fp8 and the fused LayerNorm against their peers (same process each)", "",
             "| section | precision, layers | fused norm | seq/s | peer | peer seq/s | ratio | MFU |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for name, r in runs:
        peer = r.get("compare")
        if "seq_per_s" not in r:
            lines.append(f"| {name} | failed or not run | | | | | | |")
            continue
        layers = f"fp8 {r['fp8_recipe']}: {','.join(r['fp8_layers'])}" if r.get("fp8_layers") else r["precision"]
        peer_rate = r.get(f"{peer}_seq_per_s")
        versus = f"{peer_rate:,.0f} | {r['ratio']:.3f}x" if peer_rate else "- | -"
        mfu = f"{r['mfu']:.3f}" if r.get("mfu") is not None else "-"
        lines.append(f"| {name} | {layers} | {r.get('fused_norm')} | {r['seq_per_s']:,.0f} | "
                     f"{PEER_NAMES.get(peer, '-')} | {versus} | {mfu} |")
    headline = dict(runs).get("fp8_headline") or {}
    if headline.get("hf_seq_per_s"):
        met = headline["seq_per_s"] >= 1000 and headline["ratio"] >= 2.5
        lines += ["", f"Targets (>= 1,000 seq/s and >= 2.5x HF in the same run): {headline['seq_per_s']:,.0f} seq/s, "
                      f"{headline['ratio']:.2f}x HF: {'met' if met else 'not met'}."]
    return lines + [""]


def _section(name: str, command: list[str], limit: float, deadline: float, args) -> dict:
    """Run one section with what is left of the budget; its report entry."""
    timeout = min(limit, deadline - time.monotonic())
    print(f"gpu_check: {name} (up to {timeout:.0f} s)", flush=True)
    if timeout < 20:
        return {"name": name, "status": "SKIPPED (budget spent)", "seconds": 0.0}
    start = time.monotonic()
    code, stdout, stderr = _run(command, timeout)
    section = {"name": name, "seconds": time.monotonic() - start, "command": " ".join(command[1:])}
    if name == "gpu tests":
        tail = (stdout.strip().splitlines() or [""])[-1]
        ok = code == 0 or (code == 5 and args.device == "cpu")  # 5: every test skipped (no CUDA)
        section.update(status=("ok" if ok else "FAILED") + f": {tail}", log="" if ok else stdout[-3000:])
    elif code == 0:
        section.update(status="ok", result=_last_json(stdout))
    else:
        status = "TIMED OUT" if code is None else f"FAILED (exit {code})"
        section.update(status=status, result=_last_json(stdout), log=stderr[-3000:])
    print(f"gpu_check: {name}: {section['status']} in {section['seconds']:.0f} s", flush=True)
    return section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="large", choices=("tiny", "base", "large"),
                        help="with --device cpu: the model for the dry run (tiny)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="hard limit for the whole check (seconds)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the report")
    parser.add_argument("--experiments", action="store_true",
                        help="instead of the check: the headline bench's variants (EXPERIMENTS), this project only")
    parser.add_argument("--sections", default=None, metavar="A,B,...",
                        help="run these sections of the check and the experiments, in this order (after the "
                             "environment and the probe); e.g. experiment_baseline,gpu tests,large512_bf16")
    parser.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)  # internal: run one section
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget_s must be above 0, got {args.budget_s}")
    if args.sections is not None and not args.sections.strip(","):
        parser.error("--sections is empty; name sections, or leave it out for the whole check")
    if args.section:
        print(json.dumps(SECTIONS[args.section](args)))
        return 0
    deadline = time.monotonic() + args.budget_s
    report = Report(Path(args.out), args)
    me = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--model", args.model]
    bench = [sys.executable, "-m", "bert_pretrain", "bench", "--device", args.device]
    benches = {name: (name, [*bench, *rest], limit) for name, rest, limit in _bench_plan(args)}
    gpu_tests = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_fp8.py",
                 "tests/kernels/test_fused_norm.py", "tests/test_step.py", "tests/test_optim.py"]
    # In order of importance, so a short budget still measures the fp8 numbers and checks correctness.
    check = [*(benches[n] for n in FP8_CHECK if n in benches), ("lamb", [*me, "--section", "lamb"], 90),
             ("gpu tests", gpu_tests, 150), ("train_fp8", [*me, "--section", "train_fp8"], 60),
             ("train", [*me, "--section", "train"], 45), *(benches[n] for n in FP8_LATER if n in benches),
             ("layer", [*me, "--section", "layer"], 180)]
    experiments = [(name, [*bench, *rest], limit) for name, rest, limit in _experiment_plan(args)]
    if args.sections:  # any sections of both plans, in the order given
        known = {entry[0]: entry for entry in [*check, *benches.values(), *experiments]}
        unknown = [n for n in args.sections.split(",") if n not in known]
        if unknown:
            parser.error(f"--sections: unknown {unknown}; choose from {sorted(known)}")
        chosen = [known[n] for n in args.sections.split(",")]
    else:
        chosen = experiments if args.experiments else check
    plan = [(name, [*me, "--section", name], limit) for name, limit in (("environment", 60), ("probe", 60))] + chosen
    fell_back = False
    for name, command, limit in plan:
        section = _section(name, command, limit, deadline, args)
        report.add(section)
        failed_bench = "bench" in command and not section["status"].startswith(("ok", "SKIPPED"))
        if failed_bench and "--no_compile" not in command and not name.startswith("experiment_") and not fell_back:
            fell_back = True  # once: a failure every bench shares would otherwise spend the budget on fallbacks
            # Numbers without compilation (and without flash attention when the probe saw it fail) beat none.
            probe = next((s.get("result") or {} for s in report.sections if s["name"] == "probe"), {})
            fallback = ["--no_compile"] + ([] if str(probe.get("flash", "")).startswith("ok") else ["--attention", "sdpa"])
            report.add(_section(f"{name}_fallback", [*command, *fallback], limit, deadline, args))
    print(report.markdown())
    print(f"gpu_check: report written to {report.path}", flush=True)
    return 0 if report.all_ok() else 1  # a failed, timed-out or skipped section: the report says which


if __name__ == "__main__":
    sys.exit(main())
