"""How a model summary (torchdeck.models.summary.ModelSummary) reads on screen and on the command line."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from torchdeck.fmt import fmt_bytes, fmt_count, fmt_number
from torchdeck.models.summary import LayerInfo, ModelSummary


def fmt_value(v) -> str:
    """A value of a dataset's description: figures by magnitude, lists element by element."""
    if isinstance(v, float):
        return fmt_number(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def overview_lines(s: ModelSummary) -> list[tuple[str, str]]:
    """(label, value) rows: totals, sizes, the training-memory estimate, the forward pass."""
    frozen = "all trainable" if not s.params_frozen else f"{fmt_count(s.params_frozen)} frozen"
    rows = [("parameters", f"{fmt_count(s.params_total)} ({frozen})")]
    if s.buffers_count:
        rows.append(("buffers", f"{s.buffers_count} tensors, {fmt_count(s.buffers_elements)} values"))
    sz = s.sizes.get("params", {})
    rows.append(("weights", f"fp32 {fmt_bytes(sz.get('fp32'))} · bf16/fp16 {fmt_bytes(sz.get('bf16'))} · "
                            f"int8 {fmt_bytes(sz.get('int8'))}"))
    m = s.memory
    act = "unknown" if m.activations is None else fmt_bytes(m.activations)
    rows.append(("training", f"about {fmt_bytes(m.total)} (batch {m.batch_size}, {m.optimizer})"))
    rows.append(("", f"weights {fmt_bytes(m.weights + m.buffers)} · grads {fmt_bytes(m.gradients)} · "
                     f"optimizer {fmt_bytes(m.optimizer_state)} · activations {act}"))
    if s.input_shape is not None:
        if s.forward_error:
            where = "" if s.forward_error_at is None else f" in {s.forward_error_at or 'the model itself'}"
            rows.append(("forward", f"FAILED on {tuple(s.input_shape)}{where}: {s.forward_error_type}: {s.forward_error}"))
        else:
            from torchdeck.models.summary import format_shape

            rows.append(("forward", f"{tuple(s.input_shape)} -> {format_shape(s.output_shape)}"))
    else:
        rows.append(("forward", "no input shape known: shapes and activations unknown"))
    rows.append(("built on", s.device_used + (f" (meta failed: {s.meta_error})" if s.meta_error else "")))
    return rows


def render_overview(s: ModelSummary, *, markup: bool = True) -> str:
    rows = overview_lines(s)
    width = max(len(k) for k, _ in rows)
    out = []
    for k, v in rows:
        v = escape(v) if markup else v
        if markup and k == "forward" and v.startswith("FAILED"):
            v = f"[red]{v}[/red]"
        out.append(f"{k:<{width}}  {v}")
    return "\n".join(out)


def layer_label(layer: LayerInfo, forward_ran: bool = True) -> Text:
    """`name Type  params  -> shape` for one node of the layer tree."""
    text = Text()
    text.append(layer.name or "model", style="bold")
    text.append(f" {layer.type}", style="cyan")
    if layer.same_as:
        text.append(f"  (same module as {layer.same_as})", style="dim")
        return text
    if layer.total:
        text.append(f"  {fmt_count(layer.total)}")
        if layer.total_frozen:
            text.append(f" ({fmt_count(layer.total_frozen)} frozen)", style="yellow")
    if layer.output_shape is not None:
        text.append(f"  -> {layer.output_text}", style="green")
    elif forward_ran and layer.calls == 0 and layer.depth > 0:
        text.append("  (not called by forward)", style="dim")
    return text


def render_text(s: ModelSummary) -> str:
    """The whole summary for a terminal: overview, then the layer tree, indented."""
    lines = [render_overview(s, markup=False), ""]
    rows = [("layer", "type", "params", "frozen", "output")]
    for layer in s.layers:
        name = ("  " * layer.depth) + (layer.name or "(model)")
        if layer.same_as:
            rows.append((name, layer.type, "-", "-", f"same as {layer.same_as}"))
            continue
        rows.append((name, layer.type, fmt_count(layer.total), fmt_count(layer.total_frozen) if layer.total_frozen else "",
                     layer.output_text if layer.output_shape is not None else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
