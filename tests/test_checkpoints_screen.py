"""The Checkpoints screen driven by keys: open any checkpoint by typing its path (with Tab
completion), remembered paths, the tensor tree, stats, verify, diff, convert, delete, and the
trust dialog for a file that needs full unpickling."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from textual.widgets import DataTable, Input
from torchdeck.checkpoints import recent
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.checkpoint_views import DiffView, StatsView
from torchdeck.tui.screens.confirm import ConfirmDelete, ConfirmUnpickle
from torchdeck.tui.screens.convert_form import ConvertForm
from torchdeck.tui.screens.open_path import OpenPathDialog
from torchdeck.tui.widgets.tensor_tree import TensorTree
from torchdeck.workspace import Workspace
from tui_helpers import (
    press_together,
    record_notifications,
    screen_text,
    wait_for,
    wait_for_screen,
)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """A safetensors file, a Hugging Face folder and an empty folder; the cwd is their folder."""
    d = tmp_path / "files"
    (d / "hf-llama").mkdir(parents=True)
    (d / "empty").mkdir()
    torch.manual_seed(0)
    sd = {f"model.layers.{i}.{n}.weight": torch.randn(4, 4) for i in range(3) for n in ("q", "k")}
    sd["model.embed.weight"] = torch.randn(10, 4)
    sd["lm_head.weight"] = torch.randn(10, 4)
    save_file(sd, str(d / "weights.safetensors"))
    sd2 = {k: v + (0.5 if k == "lm_head.weight" else 0) for k, v in sd.items() if "layers.2" not in k}
    sd2["extra.bias"] = torch.zeros(3)
    save_file(sd2, str(d / "other.safetensors"))
    save_file(sd, str(d / "hf-llama" / "model.safetensors"))
    (d / "hf-llama" / "config.json").write_text(json.dumps({"model_type": "llama", "transformers_version": "4.50.0"}))
    monkeypatch.chdir(d)
    return d


def app_for(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws)


def tree_text(app) -> str:
    tree = app.screen.query_one("#ckpt-tree", TensorTree)
    return "\n".join("".join(seg.text for seg in tree.render_line(y)).rstrip() for y in range(tree.size.height))


def table_keys(app) -> list[str]:
    table = app.screen.query_one("#ckpt-table", DataTable)
    return [k.value for k in table.rows]


async def open_by_typing(pilot, text: str, *, tab: bool = False) -> None:
    app = pilot.app
    await pilot.press("o")
    await wait_for(pilot, lambda: isinstance(app.screen, OpenPathDialog), 5, "the open dialog")
    await pilot.press(*text)
    if tab:
        await pilot.press("tab")
    await pilot.press("enter")


async def select(pilot, path: Path | str) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: str(path) in table_keys(app), 20, f"{path} listed")
    table = app.screen.query_one("#ckpt-table", DataTable)
    table.move_cursor(row=table_keys(app).index(str(path)))
    await wait_for(pilot, lambda: app.screen.shown == str(path) and str(path) in app.screen.infos
                   or str(path) in app.screen.refusals, 30, "its detail")


# -- open ----------------------------------------------------------------------------------------
async def test_open_a_safetensors_file_by_typing_with_tab_completion_and_walk_its_tree(workspace, files):
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenPathDialog), 5, "the open dialog")
        await pilot.press(*"wei", "tab")  # relative to the current directory
        field = app.screen.query_one("#open-path", Input)
        assert field.value == "weights.safetensors"
        await pilot.press("enter")
        path = str(files / "weights.safetensors")
        await wait_for(pilot, lambda: not isinstance(app.screen, OpenPathDialog), 30, "the dialog to close")
        await wait_for(pilot, lambda: path in app.screen.infos, 30, "the file inspected")
        await pilot.pause()
        text = screen_text(app)
        assert "weights.safetensors" in text and "safetensors" in text and "open" in text
        assert "176 parameters" in text  # 6 x 16 + 2 x 40
        tree = tree_text(app)
        assert "weights.safetensors  176 params, 704 B, 8 tensors" in tree
        assert "lm_head  40 params, 160 B" in tree and "model  136 params, 544 B, 7 tensors" in tree

        # Enter steps into the tree; arrows walk it; Right opens a group, Left closes it
        await pilot.press("enter")
        assert isinstance(app.focused, TensorTree)
        await pilot.press("down", "down", "right")  # model, expanded
        await pilot.press("right", "right")  # its first member (embed; safetensors sorts names), expanded
        tree = tree_text(app)
        assert "layers  96 params, 384 B, 6 tensors" in tree
        assert "weight  10x4  float32  160 B" in tree  # model.embed.weight, a leaf with shape and dtype
        await pilot.press("left", "left")  # to embed, collapsed; then to its parent
        assert app.focused.cursor_node.data.prefix == "model"


async def test_open_a_hugging_face_folder_shows_its_config_and_library(workspace, files):
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await open_by_typing(pilot, str(files / "hf-ll"), tab=True)
        path = str(files / "hf-llama")
        await wait_for(pilot, lambda: path in getattr(app.screen, "infos", {}), 30, "the folder inspected")
        await pilot.pause()
        text = screen_text(app)
        assert "hf-model" in text and "transformers 4.50.0" in text and "model_type=llama" in text


async def test_bad_paths_get_one_line_and_keep_what_was_typed(workspace, files):
    os.mkfifo(files / "pipe")
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenPathDialog), 5, "the open dialog")
        dialog = app.screen
        field = dialog.query_one("#open-path", Input)
        for typed, said in (("missing.pt", "no such file or directory"),
                            ("/etc/passwd", "not a readable PyTorch file or safetensors file"),
                            ("pipe", "FIFO"),
                            ("empty", "a directory, but not a torchdeck checkpoint")):
            field.value = ""
            await pilot.press(*typed, "enter")
            error = dialog.query_one("#open-error")
            await wait_for(pilot, lambda: said in str(error.render()), 30, f"the error for {typed}")
            line = str(error.render())
            assert "\n" not in line.strip() and "Traceback" not in line
            assert field.value == typed and app.screen is dialog
        await pilot.press("escape")
        assert not isinstance(app.screen, OpenPathDialog)
        assert recent.load(workspace.root).paths == []


async def test_opened_paths_are_remembered_across_restarts_and_a_damaged_list_is_told(workspace, files):
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await open_by_typing(pilot, "weights.safetensors")
        await wait_for(pilot, lambda: str(files / "weights.safetensors") in table_keys(app), 30, "listed")
    assert recent.load(workspace.root).paths == [str(files / "weights.safetensors")]

    app = app_for(workspace)  # a new session
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: str(files / "weights.safetensors") in table_keys(app), 20, "listed again")

    recent.recent_file(workspace.root).write_text("{not json")
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await wait_for(pilot, lambda: any("damaged" in m for _, _, m in shown), 20, "the warning")
        assert app.is_running and table_keys(app) == []
        await open_by_typing(pilot, "other.safetensors")  # and the list starts afresh
        await wait_for(pilot, lambda: str(files / "other.safetensors") in table_keys(app), 30, "listed")
    assert recent.load(workspace.root).paths == [str(files / "other.safetensors")]


# -- stats, verify, diff ---------------------------------------------------------------------------
async def test_stats_of_a_subtree_and_of_everything(workspace, files):
    sd = {"a.w": torch.tensor([1.0, 2.0, 3.0]), "a.n": torch.tensor([1.0, float("nan"), float("inf")]),
          "b.w": torch.tensor([-5.0, 5.0])}
    save_file(sd, str(files / "nan.safetensors"))
    recent.remember(workspace.root, str(files / "nan.safetensors"))
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await select(pilot, files / "nan.safetensors")
        await pilot.press("s")  # the tree's cursor is on the root: every tensor
        await wait_for(pilot, lambda: isinstance(app.screen, StatsView), 5, "the stats view")
        await wait_for(pilot, lambda: app.screen.finished, 30, "the stats")
        text = screen_text(app)
        assert "3 tensors; 1 with NaN or inf" in text and "every tensor" in text
        rows = [" ".join(str(c) for c in r) for r in app.screen.query_one("#stats-table", DataTable)._data.values()]
        assert len(rows) == 3
        await pilot.press("escape")
        await pilot.press("enter", "down", "down")  # into the tree: a, then b
        assert app.focused.cursor_node.data.prefix == "b"
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, StatsView) and app.screen.finished, 30, "the stats of b")
        text = screen_text(app)
        assert "1 tensor; all finite" in text
        table = app.screen.query_one("#stats-table", DataTable)
        assert [str(c) for c in table.get_row_at(0)][:3] == ["b.w", "-5", "5"]


async def test_verify_intact_damaged_and_rotated_away(workspace):
    from torchdeck.demo import make_demo_run

    run = make_demo_run(workspace, epochs=2, dataset_size=256, export=False)
    newest, oldest = sorted(run.checkpoints_dir.iterdir(), reverse=True)
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, newest)
        await pilot.press("v")
        await wait_for(pilot, lambda: any(t.startswith("Checkpoint intact") for _, t, _ in shown), 60, "intact")
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # a flipped bit that stays finite
        (newest / "model.safetensors").write_bytes(bytes(data))
        await pilot.press("v")
        await wait_for(pilot, lambda: any(t.startswith("Checkpoint damaged") for _, t, _ in shown), 60, "damaged")
        assert "sha256" in screen_text(app)
        await select(pilot, oldest)
        shutil.rmtree(oldest)  # retention removes it while it is selected
        await pilot.press("v")
        await wait_for(pilot, lambda: any("no longer exists" in m for _, _, m in shown), 60, "gone")
        assert sum(t.startswith("Checkpoint damaged") for _, t, _ in shown) == 1  # gone is not damaged
        await wait_for(pilot, lambda: str(oldest) not in table_keys(app), 20, "the list to drop it")


async def test_mark_two_and_diff(workspace, files):
    for name in ("weights.safetensors", "other.safetensors"):
        recent.remember(workspace.root, str(files / name))
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, files / "other.safetensors")
        await pilot.press("D")  # nothing marked: says how
        assert any("mark two checkpoints" in m for _, _, m in shown)
        await pilot.press("m", "down", "m")
        assert app.screen.marked == [str(files / "other.safetensors"), str(files / "weights.safetensors")]
        await pilot.press("D")
        await wait_for(pilot, lambda: isinstance(app.screen, DiffView) and app.screen.report, 30, "the diff")
        text = screen_text(app)
        assert "differ: 1 only in A, 2 only in B, 0 shape/dtype changes, 1 of 6 common tensors differ" in text
        rows = [[str(c) for c in app.screen.query_one("#diff-table", DataTable).get_row_at(i)] for i in range(4)]
        assert rows[0] == ["extra.bias", "only in A"]
        assert rows[3] == ["lm_head.weight", "max abs 0.5"]  # the largest difference first
        await pilot.press("escape")
        assert not isinstance(app.screen, DiffView)


# -- convert, delete ---------------------------------------------------------------------------------
async def test_convert_writes_a_new_file_and_refuses_to_overwrite(workspace, files):
    recent.remember(workspace.root, str(files / "weights.safetensors"))
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, files / "weights.safetensors")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConvertForm), 5, "the form")
        form = app.screen
        out = form.query_one("#convert-out", Input)
        assert out.value == str(files / "weights-1.safetensors")  # beside it, never the source itself
        await pilot.press("tab", "down", "enter")  # dtype: bf16
        assert out.value == str(files / "weights-bf16.safetensors")
        out.value = str(files / "other.safetensors")  # exists
        out.focus()
        await pilot.press("enter")
        assert "already exists" in str(form.query_one("#convert-error").render()) and app.screen is form
        out.value = str(files / "half.safetensors")
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(t == "Converted" for _, t, _ in shown), 60, "the conversion")
        assert (files / "half.safetensors").exists()
        from safetensors import safe_open

        with safe_open(str(files / "half.safetensors"), "pt") as f:
            assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
        assert "wrote" in screen_text(app) and "half.safetensors" in screen_text(app)
        await wait_for(pilot, lambda: str(files / "half.safetensors") in table_keys(app), 20, "listed")


async def test_delete_a_run_checkpoint_confirmed_and_cancelled_and_an_opened_path_leaves_the_list(workspace, files):
    from torchdeck.demo import make_demo_run

    run = make_demo_run(workspace, epochs=2, dataset_size=256, export=False)
    newest, oldest = sorted(run.checkpoints_dir.iterdir(), reverse=True)
    recent.remember(workspace.root, str(files / "weights.safetensors"))
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, oldest)
        await pilot.press("d")
        await wait_for_screen(pilot, app, ConfirmDelete, oldest.name, "KiB", timeout=5, what="the question")
        await pilot.press("n")
        assert oldest.exists()
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: not oldest.exists() and str(oldest) not in table_keys(app), 20, "deleted")
        assert newest.exists() and not any(p.name.startswith(".") for p in run.checkpoints_dir.iterdir())
        assert any(t == "Checkpoint deleted" for _, t, _ in shown)

        await select(pilot, files / "weights.safetensors")
        await pilot.press("d")  # not the workspace's: only forgotten
        await wait_for(pilot, lambda: str(files / "weights.safetensors") not in table_keys(app), 20, "forgotten")
        assert (files / "weights.safetensors").exists()
        assert any("its files were left alone" in m for _, _, m in shown)
        assert recent.load(workspace.root).paths == []


# -- trust -------------------------------------------------------------------------------------------
class Payload:
    """Harmless stand-in for a malicious pickle: loading it calls os.getcwd."""

    def __reduce__(self):
        return (os.getcwd, ())


async def test_a_file_that_needs_unpickling_is_refused_named_and_loads_after_the_dialog(workspace, files):
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": Payload()}, files / "needs-trust.pt")
    recent.remember(workspace.root, str(files / "needs-trust.pt"))
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, files / "needs-trust.pt")
        text = screen_text(app)
        assert "Refused" in text and "posix.getcwd" in text and "run code from the file" in text
        assert "--trust" not in text
        await pilot.press("s", "c")  # nothing reads it meanwhile
        assert not isinstance(app.screen, (StatsView, ConvertForm))
        await pilot.press("t")
        text = await wait_for_screen(pilot, app, ConfirmUnpickle, "runs code from the file", "posix.getcwd", timeout=5,
                                     what="the trust dialog")
        assert "--trust" not in text
        await pilot.press("n")  # cancelled: still refused
        assert str(files / "needs-trust.pt") in app.screen.refusals
        await pilot.press("t", "y")
        await wait_for(pilot, lambda: str(files / "needs-trust.pt") in app.screen.infos, 30, "the trusted load")
        await pilot.pause()
        assert "trusted this session" in screen_text(app) and "w  2  float32" in tree_text(app)
        assert not any("--trust" in m for _, _, m in shown)
    app = app_for(workspace)  # trust lasts this session only
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("2")
        await select(pilot, files / "needs-trust.pt")
        assert "Refused" in screen_text(app)


# -- keys where they cannot act, keys together -------------------------------------------------------
async def test_every_key_on_an_empty_list_says_why_and_keys_together_do_not_break_it(workspace, files):
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        for key in ("s", "v", "m", "D", "c", "d", "e", "t"):
            await pilot.press(key)
        assert len(shown) >= 8 and app.is_running
        assert "press o to open" in screen_text(app)
        await press_together(pilot, "o", "escape", "o", *"weights.safetensors", "enter")
        await wait_for(pilot, lambda: str(files / "weights.safetensors") in table_keys(app), 30, "opened")
        await press_together(pilot, "m", "m", "D", "s", "escape", "v", "r", "r", "enter", "down", "right", "left")
        await pilot.pause(0.5)
        await wait_for(pilot, lambda: not any(w.is_running for w in app.workers), 30, "the jobs")
        assert app.is_running
        assert "Checkpoints" in str(app.screen.query_one("#mode-bar").render()) or app.screen.is_modal


# -- the engine parts the screen relies on -----------------------------------------------------------
def test_recent_paths_are_capped_deduplicated_and_damaged_entries_skipped(tmp_path):
    for i in range(25):
        recent.remember(tmp_path, f"/data/ckpt-{i}.pt")
    recent.remember(tmp_path, "/data/ckpt-3.pt")
    paths = recent.load(tmp_path).paths
    assert len(paths) == recent.MAX_RECENT and paths[0] == "/data/ckpt-3.pt" and paths.count("/data/ckpt-3.pt") == 1
    recent.recent_file(tmp_path).write_text(json.dumps({"paths": ["/ok.pt", 3, None, "relative.pt", "/ok.pt"]}))
    loaded = recent.load(tmp_path)
    assert loaded.paths == ["/ok.pt"] and "3 damaged entries skipped" in loaded.problem
    recent.recent_file(tmp_path).write_text("[]")
    assert recent.load(tmp_path).paths == [] and "damaged" in recent.load(tmp_path).problem


def test_remove_checkpoint_refuses_anything_but_a_runs_checkpoint(workspace, files):
    from torchdeck.checkpoints import store
    from torchdeck.errors import InvalidRequest, NotFound

    with pytest.raises(InvalidRequest, match="not a checkpoint of a run"):
        store.remove_checkpoint(files / "weights.safetensors", workspace.runs_dir)
    with pytest.raises(InvalidRequest):
        store.remove_checkpoint(workspace.runs_dir / "r1" / "checkpoints" / ".." / ".." / ".." / "models.toml",
                                workspace.runs_dir)
    assert (files / "weights.safetensors").exists() and workspace.models_file.exists()
    with pytest.raises(NotFound, match="no longer exists"):
        store.remove_checkpoint(workspace.runs_dir / "r1" / "checkpoints" / "step-1", workspace.runs_dir)


async def test_exporting_a_scripts_checkpoint_says_its_model_is_the_scripts_and_how(workspace):
    """run.checkpoint() of a script's own model has weights and no model spec: e on it says so and
    gives the command that exports it with the model, instead of a failed export job."""
    import torchdeck

    model = torch.nn.Linear(3, 2)
    with torchdeck.init(name="mine", workspace=workspace.root, config={"lr": 0.003}) as run:
        run.log({"loss": 1.5})
        path = run.checkpoint(model)
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await select(pilot, path)
        # its loss in the list, and the script's own config in the detail, not the training form's defaults
        assert app.screen.query_one("#ckpt-table", DataTable).get_row(str(path))[3] == "1.5"
        detail = screen_text(app)
        assert "config    lr=0.003" in detail and "batch_size=16" not in detail, detail
        await pilot.press("e")
        await wait_for(pilot, lambda: shown, 10, "the answer")
        assert "the script's own (Linear)" in shown[-1][2] and f"--checkpoint {path} --model" in shown[-1][2]
        assert app.screen.__class__.__name__ == "CheckpointsScreen"  # no export started
