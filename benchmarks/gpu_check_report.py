"""``gpu-check.md``: the results of ``benchmarks/gpu_check.py`` as Markdown tables, one per section."""

from __future__ import annotations

from typing import Any

from toolkit.formatting.blocks import markdown_table
from toolkit.run_folder import NO_COMMIT

_COLUMNS = {  # per section: the row keys shown, in order (losses, logs and errors stay in the JSON)
    "1": ("test", "outcome", "seconds", "message"),
    "2": ("run", "device", "attention", "steps", "first_loss", "last_loss", "train_s", "tokens_per_s"),
    "3": ("run", "config", "engine", "processes", "precision", "attention", "exit_code", "steps", "first_loss",
          "last_loss", "max_loss_diff", "wall_s"),
    "4": ("variant", "rows", "seq_len", "status", "attention_used", "offload", "tiles", "real_tokens_per_s",
          "tokens_per_s", "mfu", "mfu_spec", "peak_gib", "reserved_gib", "step_s", "step_s_min", "step_s_max",
          "wall_s"),
}
_COLUMNS["5"] = _COLUMNS["4"]
_COLUMNS["6"] = ("variant", "seq_len", "rows", "status", "tflops", "vs_varlen_fa2", "seconds", "first_s")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _check_line(check: dict[str, Any]) -> str:
    difference = "not measured" if check["difference"] is None else f"{check['difference']:.2e}"
    why = f": {check['why']}" if check["why"] else ""
    return f"- **{check['result']}**: {check['what']}: {difference} (tolerance {check['tolerance']:.0e}){why}"


def markdown(result: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(result.get("versions", {}).items()))
    memory = f", {result['memory_gib']:.1f} GiB" if result.get("memory_gib") else ""
    checks = [c["result"] for section in result["sections"] for c in section["checks"]]
    lines = [f"# GPU check ({result['mode']})", "",
             f"- started {result['started']}, took {result.get('elapsed_s', 0):.0f} s of a {result['budget_s']:.0f} s "
             "budget",
             f"- device: {result.get('device', '?')}{memory}; measured matmul rate (MFU denominator): "
             f"{result.get('matmul_tflops', 0):.3g} TFLOP/s; memory allocator: {result.get('allocator', '?')}",
             f"- checks: {checks.count('pass')} passed, {checks.count('fail')} failed"
             + (f", {checks.count('reported')} reported (not asserted)" if "reported" in checks else ""),
             f"- versions: {versions}", f"- toolkit commit: {result.get('commit', NO_COMMIT)}", ""]
    if result.get("failed"):
        lines[-1:] = [f"- failed before any section: {result['failed']}", ""]
    for section in result["sections"]:
        lines += [f"## {section['name']}", "",
                  f"{section['elapsed_s']:.0f} s of a {section['budget_s']:.0f} s budget.", ""]
        columns = _COLUMNS[section["name"][0]]
        if section["rows"]:
            lines += [markdown_table(columns, [[_cell(row.get(c)) for c in columns] for row in section["rows"]]), ""]
        for row in section["rows"]:
            if row.get("error"):
                error = row["error"].strip().splitlines()[-1] if row["error"].strip() else ""
                lines.append(f"- {row.get('variant')} at {row.get('seq_len')}: {row['status']}: {error[:300]}")
        lines += [_check_line(check) for check in section["checks"]]
        lines += [f"- skipped {s['what']}: {s['why']}" for s in section["skipped"]]
        lines += [f"- {note}" for note in section["notes"]]
        lines.append("")
    return "\n".join(lines)
