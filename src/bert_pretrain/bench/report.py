"""`bench`'s output: the Markdown table and the one strict-JSON line (the last line of stdout)."""

from __future__ import annotations

from bert_pretrain import strict_json

# The peer's name in the table for each --compare (its result keys carry the --compare value as prefix).
PEER_NAMES = {"hf": "hf_transformers", "bf16": "bert_pretrain_bf16"}


def json_line(result: dict) -> str:
    """The result as one line of strict JSON: a NaN or inf (a diverged loss) becomes null."""
    return strict_json.dumps(result)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def format_table(result: dict) -> str:
    """A Markdown table: one row per measure, one column per contestant."""
    keys = ("seq_per_s", "tokens_per_s", "tflops", "mfu", "peak_mem_gb", "power_w", "joules_per_seq", "loss")
    peer = result.get("compare")
    has_hf = f"{peer}_seq_per_s" in result  # the peer ran (and finished)
    header = "| measure | bert_pretrain |" + (f" {PEER_NAMES[peer]} |" if has_hf else "")
    lines = [header, "|---|---:|" + ("---:|" if has_hf else "")]
    for key in keys:
        cells = [_fmt(result.get(key))] + ([_fmt(result.get(f"{peer}_{key}"))] if has_hf else [])
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if has_hf:
        lines.append(f"| ratio (seq/s) | {result['ratio']:.2f}x | 1.00x |")
    lines.append(f"| input pipeline seq/s | {_fmt(result['input_seq_per_s'])} "
                 f"({result['input_ratio']:.1f}x the step) |" + (" |" if has_hf else ""))
    return "\n".join(lines)
