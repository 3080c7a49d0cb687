"""The Exports screen (issue 13 item 8) driven by keys: a new export with a variant from the form,
its report as tables, validate, benchmark, open any .onnx (a damaged one too), the export's log;
the exporter's and ONNX Runtime's output never reaching the terminal."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox, DataTable, Input
from torchdeck.demo import make_demo_workspace
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.export_form import ExportForm, OpenOnnxDialog
from torchdeck.tui.screens.log_view import LogScreen
from tui_helpers import screen_text, wait_for, wait_for_screen


@pytest.fixture
def workspace(tmp_path):
    return make_demo_workspace(tmp_path / "ws", epochs=1, dataset_size=256, export=False)


def idle(app) -> bool:
    return not app.screen.busy


async def test_new_export_with_a_variant_then_validate_bench_open_and_log(workspace, tmp_path, capfd):
    app = TorchdeckApp(workspace=workspace)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "exports", 5, "the Exports screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.selected_source() is not None, 30, "the checkpoint list")

        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportForm), 5, "the export form")
        form = app.screen
        form.query_one("#variant-int8-dynamic", Checkbox).focus()
        await pilot.press("space")
        opset = form.query_one("#export-opset", Input)
        opset.focus()
        opset.value = "99"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "opset must be between 7 and 23" in screen_text(app), 5, "the opset error")
        assert isinstance(app.screen, ExportForm)  # the form stays, the error inline
        opset.value = "17"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, 5, "the form to close")
        await wait_for(pilot, lambda: "Exporting" in screen_text(app), 5, "the progress line")
        await wait_for(pilot, lambda: idle(app), 300, "the export and its variant")
        text = screen_text(app)
        assert "matches PyTorch" in text and "opset 17" in text and "int8-dynamic of" in text, text
        assert "eager/ORT" in text and "batch 8" in text
        files = sorted(p.name for p in workspace.exports_dir.glob("*.onnx"))
        assert len(files) == 2 and any(".int8-dynamic." in f for f in files)

        table = screen.query_one("#exports-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "both exports listed")
        table.focus()
        table.move_cursor(row=[str(k.value) for k in table.rows].index(
            next(str(p) for p in workspace.exports_dir.glob("*.onnx") if ".int8" not in p.name)))
        await pilot.press("v")
        await wait_for(pilot, lambda: idle(app) and "against" in screen_text(app), 120, "the validation")
        assert "passed" in screen_text(app)
        await pilot.press("b")
        await wait_for(pilot, lambda: idle(app) and "p50 ms" in screen_text(app), 120, "the benchmark")
        assert "throughput" in screen_text(app)

        bad = tmp_path / "damaged.onnx"
        bad.write_bytes(b"\x08\x07not a model at all" * 10)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenOnnxDialog), 5, "the open dialog")
        app.screen.query_one("#onnx-path", Input).value = str(tmp_path / "missing.onnx")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "no such file" in screen_text(app), 5, "the inline error")
        app.screen.query_one("#onnx-path", Input).value = str(bad)
        await pilot.press("enter")
        await wait_for(pilot, lambda: idle(app) and "Cannot open" in screen_text(app), 60, "the refusal")
        assert "damaged.onnx" in screen_text(app) and app.screen is screen  # told, and the TUI goes on

        good = next(p for p in workspace.exports_dir.glob("*.onnx") if ".int8" in p.name)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenOnnxDialog), 5, "the open dialog")
        app.screen.query_one("#onnx-path", Input).value = str(good)
        await pilot.press("enter")
        await wait_for(pilot, lambda: idle(app) and "IR version" in screen_text(app), 60, "the inspection")
        assert "MatMulInteger" in screen_text(app) or "DynamicQuantizeLinear" in screen_text(app)

        # a file of someone else's with symbolic axes past the batch: their sizes asked in the dialog
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph, producer_name="elsewhere"), str(tmp_path / "foreign.onnx"))
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenOnnxDialog), 5, "the open dialog")
        app.screen.query_one("#onnx-path", Input).value = str(tmp_path / "foreign.onnx")
        app.screen.query_one("#onnx-dims", Input).value = "H=4,W"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "NAME=SIZE" in screen_text(app), 5, "the dims error")
        app.screen.query_one("#onnx-dims", Input).value = "H=4,W=4"
        await pilot.press("enter")
        await wait_for(pilot, lambda: idle(app) and "elsewhere" in screen_text(app), 60, "the inspection")
        await pilot.press("b")  # the opened file, not the table's row
        await wait_for(pilot, lambda: idle(app) and "p50 ms" in screen_text(app), 60, "its benchmark")
        assert "foreign.onnx" in screen_text(app)

        table.focus()
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen), 5, "the export's log")
        await pilot.press("escape")
    out = capfd.readouterr()
    assert "torchvision" not in out.out + out.err and "onnxscript" not in out.out + out.err


async def test_the_export_process_is_warm_for_the_second_export(workspace):
    """The first export pays for torch, ONNX and the exporter's registry once; the next does not."""
    import time

    app = TorchdeckApp(workspace=workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("4")
        screen = app.screen
        await wait_for(pilot, lambda: screen.selected_source() is not None, 30, "the checkpoint list")
        await wait_for(pilot, lambda: screen.child.alive(), 10, "the export process")
        seconds = []
        for _ in range(2):
            t = time.monotonic()
            await pilot.press("e")
            await wait_for(pilot, lambda: screen.busy, 5, "the export to start")
            await wait_for(pilot, lambda: idle(app), 300, "the export")
            assert "matches PyTorch" in screen_text(app)
            seconds.append(time.monotonic() - t)
        assert screen.child.ready and screen.child.alive()
        assert seconds[1] < 6.0, seconds  # a fresh process spends 7-9 s; the warm one the export's own time
        pid = screen.child.proc.pid
    import os

    from helpers import pid_gone

    await_deadline = time.monotonic() + 10
    while not pid_gone(pid) and time.monotonic() < await_deadline:
        time.sleep(0.05)
    assert pid_gone(pid) or not os.path.exists(f"/proc/{pid}")  # the child ends with the screen


BRANCHY = '''
import torch.nn as nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: the dynamo exporter cannot trace it
            return self.fc(x)
        return self.fc(-x) * 2


def branchy():
    return Branchy()
'''


async def test_a_dynamo_failure_offers_the_legacy_exporter_and_the_tui_goes_on(workspace, tmp_path):
    from safetensors.torch import save_file
    from torchdeck.tui.screens.dialogs import Confirm

    (workspace.root / "branchymod.py").write_text(BRANCHY)
    import torch

    torch.manual_seed(0)
    weights = {f"fc.{k}": v for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    save_file(weights, str(tmp_path / "branchy.safetensors"))
    app = TorchdeckApp(workspace=workspace)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("4")
        screen = app.screen
        await wait_for(pilot, lambda: screen.selected_source() is not None, 30, "the checkpoint list")
        argv = ["export", "onnx", "--checkpoint", str(tmp_path / "branchy.safetensors"), "--model",
                "branchymod:branchy", "--trust", "--input-shape", "1,4", "--out", str(tmp_path / "b.onnx")]
        screen.start_job("export", "branchy", [("export onnx", argv)])  # what the form sends, for a user's model
        await wait_for_screen(pilot, app, Confirm, "data-dependent", "legacy", timeout=120,
                              what="the legacy exporter offer")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen is screen and idle(app) and "failed" in screen_text(app).lower(),
                       120, "the legacy export's validation")
        assert "disagrees with PyTorch" in screen_text(app) and "legacy" in screen_text(app)
        assert not (tmp_path / "b.onnx").exists()
        await pilot.press("b")  # the TUI goes on: keys still work
        await wait_for(pilot, lambda: "Choose an ONNX export" in screen_text(app) or idle(app), 10, "the screen")


def test_the_export_process_dying_mid_request_is_told_and_replaced(tmp_path):
    import os
    import signal
    import threading

    from torchdeck.tui.export_child import ExportChild

    child = ExportChild(tmp_path / "child.log")
    child.warm()
    answer: list = []
    t = threading.Thread(target=lambda: answer.append(child.run(["onnx", "inspect", str(tmp_path / "x.onnx")])))
    t.start()
    os.kill(child.proc.pid, signal.SIGKILL)  # still warming up: the request is queued in its stdin
    t.join(60)
    code, out, err = answer[0]
    # killed after the request reached its stdin ("ended"), or before ("could not be reached")
    assert code == 1 and ("export process ended" in err or "could not be reached" in err), err
    code, out, err = child.run(["onnx", "inspect", str(tmp_path / "x.onnx"), "--json"], timeout=120)
    assert code == 2 and '"not_found"' in out  # a new child answered
    child.close()
    assert child.proc is None
